"""Stop the app that runs, start the release `current` points at, and prove it answers.

A release is live only when Trainyard has proof that the *new* release answers, never
because the old process still holds the port and answers health:

- `run:` (a managed process): before it starts, the app port must be free or held only by
  the app Trainyard started (checked before the switch too), which is stopped first.
  After health answered, the port's listeners must all be in the session of the process
  Trainyard started, and that process must still run. A listener of anything else fails
  the deploy, naming the port and the holder.
- `health.expect` holding `{sha}`: the health body must contain the release's SHA.
- `start`/`stop` (an app that manages itself) without that: nothing can prove it, and the
  log says so. One thing can be disproved: if the very processes that held the port
  before `start` ran still hold it after, the new release did not take it over, and the
  deploy fails.

`bring_up` returns the "live: ..." line saying which proof held (or that none could).
"""

import shlex
import time

from .app import APP_SCRIPT, SCRIPT_NAME, Probe, printable
from .base import COMMAND_TIMEOUT, StepFailed, expand
from .health import check_health, expected_text, health_url

STATE = ("shared", "trainyard")  # under the node's base: app.pid, app.start, app.log
SHA_MARK = "{sha}"
EXIT_CHECK_INTERVAL = 1.0  # seconds between "is the app still running?" while health waits
LOG_TAIL_LINES = 20
UNPROVEN = "live: health answered, but nothing proves it is the new release: add `expect` to health"
DETACH_HINT = ("`start` must leave the app running on its own and exit 0 once it is launched: "
               "the app in a session of its own (setsid) before `start` exits, its output sent "
               "to a file; whatever is still in `start`'s process group when it exits is "
               "stopped. Or use `deploy.run:` and Trainyard keeps the app running")


def bring_up(node, steps, sha, *, host, port, replacing, restoring=False):
    """Stop what runs, start `sha` (which `current` points at), check that it answers.

    `replacing` is the release whose app runs now (None: none; `sha` itself: a restart).
    `restoring`: `sha` is the release that was live before a failed deploy, whose own
    process may rightly still hold the port. Raises StepFailed; returns the "live: ..." line."""
    kind = _Managed if steps.run else _SelfManaged
    app = kind(node, steps, sha, host, port, replacing)
    app.restoring = restoring
    # TRAINYARD_SHA names the release that starts: a rollback starts an older one than the
    # deploy's environment was made for, and an app that reports it must report that one.
    deploy_env = node.env
    if deploy_env and "TRAINYARD_SHA" in deploy_env and sha:
        node.env = {**deploy_env, "TRAINYARD_SHA": sha}
    try:
        live = app.bring_up()
    finally:
        node.env = deploy_env
    node.log(live)
    return live


def check_port(node, steps, port):
    """Before the switch, for a `run:` app: the port must be free or held by the app
    Trainyard started (stopped later). Raises StepFailed naming the holder otherwise."""
    app = _Managed(node, steps, None, None, port, None)
    probe = app.probe()
    app.refuse_foreign(probe, probe.app_pid if probe.app_running else None)


def stop_managed(node, steps):
    """Stop the `run:` app Trainyard started, if it runs (TERM, KILL after stop_timeout)."""
    _Managed(node, steps, None, None, None, None).stop()


class _App:
    restoring = False

    def __init__(self, node, steps, sha, host, port, replacing):
        self.node, self.steps, self.sha, self.host, self.port = node, steps, sha, host, port
        self.replacing = replacing
        self.state = node.path(*STATE)
        self.expect = expected_text(steps.health_expect, sha) if sha else ""

    def call(self, action, *args, **kwargs):
        return self.node.script(APP_SCRIPT, [action, self.state, *map(str, args)], name=SCRIPT_NAME,
                                **kwargs)

    def probe(self, *, with_port=True):
        with_port = with_port and self.port is not None
        return Probe(self.call("probe", self.port if with_port else "-"))

    def health(self, give_up=None):
        """Poll the health URL; (url, ok, detail)."""
        url = health_url(self.steps.health, self.host, self.port)
        ok, detail = check_health(url, timeout=self.steps.health_timeout, cancel=self.node.cancel,
                                  log=self.node.log, on_tick=self.node.on_tick, expect=self.expect,
                                  give_up=give_up)
        return url, ok, detail

    def proven_by_expect(self):
        return bool(self.steps.health_expect) and SHA_MARK in self.steps.health_expect

    def unproven(self):
        if self.steps.health_expect:
            return (f"live: health answered with {self.expect!r}, but nothing proves it is the new "
                    f"release: put `{SHA_MARK}` in health's `expect`")
        return UNPROVEN


class _Managed(_App):
    """`run:`: Trainyard starts the process, keeps its pid, stops it."""

    exited = False  # seen to have exited while health waited

    def bring_up(self):
        with self.node.step("stop"):
            self.stop()
        with self.node.step("start"):
            pid = self.start()
        if not self.steps.health:
            probe = self.probe(with_port=False)
            if not probe.app_running:
                raise StepFailed(f"the app (pid {pid}) exited{self.tail()}")
            return (f"live: the app runs (pid {pid}), but nothing checks that it answers: add "
                    f"`health` with `expect: \"{SHA_MARK}\"`")
        with self.node.step("health"):
            url, ok, detail = self.health(give_up=self._exit_watch(pid))
            if not ok:
                raise StepFailed(f"{url}: {detail}{self.why_not(pid)}")
            return self.prove(pid)

    def stop(self):
        grace = int(self.steps.stop_timeout)
        word, pid = (self.call("stop", grace, timeout=grace + COMMAND_TIMEOUT).split() + ["", ""])[:2]
        self.node.log({
            "none": f"the app (pid {pid}) had exited already" if pid else "no app was running",
            "stopped": f"stopped pid {pid} with TERM",
            "killed": f"pid {pid} did not stop within {grace}s of TERM (stop_timeout): killed",
        }.get(word, f"unexpected answer: {printable(word)} {printable(pid)}"))

    def start(self):
        """Start the command, unless anything holds the port (nothing of the app runs now)."""
        argv = expand(self.steps.run, self.node.env)
        output = self.call("start", "-" if self.port is None else self.port, *argv,
                           cwd=self.node.path("current"), env=self.node.env)
        self.refuse_foreign(Probe(output), None)
        word, pid, code = ((output.splitlines() or [""])[-1].split() + ["", "", ""])[:3]
        if word == "exited":
            raise StepFailed(f"`{shlex.join(argv)}` exited at once (status {code}){self.tail()}")
        if word != "started":
            raise StepFailed(f"could not start `{shlex.join(argv)}` in a session of its own")
        self.node.log(f"started pid {pid}: `{shlex.join(argv)}` in a session of its own, output "
                      f"in {self.state}/app.log")
        return int(pid)

    def refuse_foreign(self, probe, session):
        """Fail if anything but the session `session` (the app's pid; None: nothing is
        the app's) holds the port."""
        if self.port is None:
            return
        if probe.port == "unknown":
            self.node.log("(cannot see the node's listening sockets: no /proc/net/tcp; only "
                          "`expect` in health can prove which release answers)")
            return
        foreign = probe.foreign(session)
        if probe.hidden or foreign:
            raise StepFailed(f"port {self.port} is held by {probe.describe_holders(foreign)}, not "
                             "by this app: stop it or give the node another app_port")
        self.node.log(f"port {self.port} is held by the app Trainyard started (pid {session}), "
                      "stopped before the new release starts" if probe.port == "held"
                      else f"port {self.port} is free")

    def tail(self):
        """The end of the app's log, from the last start on."""
        lines = self.call("tail", 5 * LOG_TAIL_LINES).rstrip().splitlines()
        starts = [i for i, line in enumerate(lines) if line.startswith("[trainyard] ")]
        text = "\n".join(lines[starts[-1] if starts else 0:][-LOG_TAIL_LINES:])
        if not text:
            return f"; {self.state}/app.log is empty"
        return f"; the end of {self.state}/app.log:\n{printable(text, keep_newlines=True)}"

    def _exit_watch(self, pid):
        """For check_health: the reason to stop waiting once the app has exited."""
        checked = [time.monotonic()]

        def exited():
            if time.monotonic() - checked[0] < EXIT_CHECK_INTERVAL:
                return None
            checked[0] = time.monotonic()
            if self.probe(with_port=False).app_running:
                return None
            self.exited = True
            command = shlex.join(expand(self.steps.run, self.node.env))
            return f"the app `{command}` (pid {pid}) exited before it answered{self.tail()}"

        return exited

    def why_not(self, pid):
        """After health failed: what the node says about the app and its port."""
        if self.exited:
            return ""  # the reason health gave up says so, with the log
        probe = self.probe()
        if not probe.app_running:
            return f"; the app (pid {pid}) exited{self.tail()}"
        foreign = probe.foreign(pid)
        if probe.hidden or foreign:
            return (f"; port {self.port} is held by {probe.describe_holders(foreign)}, not by the "
                    f"app Trainyard started (pid {pid})")
        if probe.port == "free":
            return (f"; the app (pid {pid}) runs, but nothing listens on port {self.port}: it must "
                    "listen on $PORT")
        return ""

    def prove(self, pid):
        probe = self.probe()
        if not probe.app_running:
            raise StepFailed(f"health answered, but the app Trainyard started (pid {pid}) is not "
                             f"running: {probe.describe_holders() or 'something else'} answered"
                             f"{self.tail()}")
        foreign = probe.foreign(pid)
        if probe.hidden or foreign:
            raise StepFailed(f"health answered, but port {self.port} is held by "
                             f"{probe.describe_holders(foreign)}, not by the app Trainyard started "
                             f"(pid {pid})")
        answered = f"answered health with {self.expect!r}" if self.expect else "answered health"
        if probe.port == "held":
            return (f"live: pid {pid}, started by Trainyard for {self.sha}, holds port {self.port} "
                    f"and {answered}")
        if self.proven_by_expect():
            return f"live: health answered with {self.sha} (the app runs as pid {pid})"
        return self.unproven()


class _SelfManaged(_App):
    """`start`/`stop`: the app detaches and stops on its own."""

    def bring_up(self):
        steps, node = self.steps, self.node
        if steps.stop and self.replacing:
            with node.step("stop"):
                node.run(expand(steps.stop, node.env), cwd=node.release(self.replacing),
                         env=node.env, timeout=steps.stop_command_timeout)
        before = None
        if steps.start:
            with node.step("start"):
                before = self.port_before_start()
                try:
                    node.run(expand(steps.start, node.env), cwd=node.path("current"), env=node.env,
                             timeout=steps.start_timeout)
                except StepFailed as exc:
                    raise StepFailed(f"{exc}{self.port_note()}") from exc
        if not steps.health:
            return (f"live: nothing checks that the release answers: add `health` with `expect: "
                    f"\"{SHA_MARK}\"`")
        with node.step("health"):
            url, ok, detail = self.health()
            if not ok:
                raise StepFailed(f"{url}: {detail}{self.why_not(before)}")
            return self.prove(before)

    def port_before_start(self):
        """Who holds the port before `start`: after `stop`, nothing may; without proof by
        `expect`, the holders are compared after health (one node command saved else)."""
        stopped = bool(self.steps.stop and self.replacing)
        if self.port is None or not (stopped or self.steps.health and not self.proven_by_expect()):
            return None
        before = self.probe()
        if stopped and (before.hidden or before.holders):
            raise StepFailed(f"port {self.port} is still held by {before.describe_holders()} after "
                             "`stop` ran: `stop` must end the app (and exit 0 if it was not running)")
        return before

    def port_note(self):
        if self.port is None:
            return ""
        probe = self.probe()
        if probe.port == "held":
            return f" (port {self.port} is held by {probe.describe_holders()})"
        return f" (port {self.port} is {probe.port})"

    def why_not(self, before):
        if self.port is None:
            return ""
        probe = self.probe()
        if probe.port == "free":
            return f"; nothing listens on port {self.port} on the node: {DETACH_HINT}"
        if self._same_holders(before, probe):
            return (f"; port {self.port} is still held by {probe.describe_holders()}, which held it "
                    "before `start` ran")
        if probe.port == "held":
            return f"; port {self.port} is held by {probe.describe_holders()}"
        return ""

    def prove(self, before):
        if self.proven_by_expect():
            return f"live: health answered with {self.sha}"
        if self.replacing != self.sha and not self.restoring and self.port is not None:
            after = self.probe()
            if self._same_holders(before, after):
                raise StepFailed(
                    f"health answered, but port {self.port} is still held by "
                    f"{after.describe_holders()}, which held it before `start` ran: the old process "
                    f"answers, not the new release (if `start` reloads the app in place, add "
                    f"`expect: \"{SHA_MARK}\"` to health so that Trainyard can tell)")
        return self.unproven()

    @staticmethod
    def _same_holders(before, after):
        return bool(before and before.holders and after.pids() == before.pids())
