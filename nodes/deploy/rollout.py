"""The production rollout: one release to many nodes, off-cycle node(s) first, then the
rest in batches; each node drained, switched and proven live. No database here: the
caller records what the callbacks and `RolloutResult` say.

What `rollout` guarantees:

- Order: every off-cycle target first, as one batch; then the others in the order given,
  `batch_size` at a time. The nodes of a batch run in parallel (a thread each); a batch
  starts only when every node of the batch before it is live.
- On each node: if the node has a release, `drain` runs in `<base>/current` and then
  `drain_check` runs there until it exits 0, both in one command on the node. When
  `drain_timeout` passes first, the log says so and the deploy goes on: a node that will
  not drain must not hold back a production release (a `drain` that fails, by contrast,
  fails the node). Then `deploy_release`: unpack, switch, prove the new release answers;
  if that fails it puts its own node back.
- A node that fails stops the rollout: the rest of its batch finishes, no further batch
  starts, and every other node this rollout switched goes back to the release it had
  (`protocol.rollback`, in parallel); a node that had none gets its app stopped and
  `current` removed. A `cancel` stops the running commands and does the same. The way
  back itself is never cancelled.
- Nodes of batches that never started are never sent a command: not even a drain.
- Callbacks (`log`, `on_node_start`, `on_node_done`, `on_tick`) run in the caller's
  thread, never in the worker threads, so they may use the caller's database
  connection. `on_node_start(target)` returns before the node is drained;
  `on_node_done(target, outcome)` follows the node's deploy, and comes a second time for
  a node rolled back after a failure (`outcome.rolled_back`). A callback that raises
  fails the rollout as a node would (the error is in the message).
"""

import queue
import shlex
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

from .app import printable
from .base import (
    CHECKSUM_RE,
    COMMAND_TIMEOUT,
    SHA_RE,
    DeployError,
    StepFailed,
    expand,
    validate_sha,
)
from .liveness import stop_managed
from .node import _Node
from .protocol import deploy_release, rollback

TICK_SECONDS = 0.25  # on_tick at least this often while nodes work
SHORT_SHA = 10
REASON_SHOWN = 300

# The drain step, one sh script: $1 the base, $2 the drain timeout in centiseconds. The
# drain and drain_check commands are pasted in by `_drain_script`, every argument quoted
# (as `_Node.run_all` does). Prints `trainyard: current -> <link>` first (or that there is
# no release) and a verdict last.
_DRAIN_HEAD = """\
link=$(readlink -- "$1/current") || { echo "trainyard: no release: nothing to drain"; exit 0; }
echo "trainyard: current -> $link"
cd -- "$1/current" || exit 1
"""
_DRAIN_RUN = """\
{command} || {{ status=$?; echo "trainyard: drain failed: exited $status"; exit 0; }}
"""
# Time from /proc/uptime in centiseconds (date +%s, in whole seconds, where it is missing).
# Checks are 0.1 s apart at first, then 0.2, 0.5 and 1 s.
_DRAIN_WAIT = """\
now() {{ if read up rest 2> /dev/null < /proc/uptime; then echo "${{up%%.*}}${{up#*.}}"
        else echo "$(($(date +%s) * 100))"; fi; }}
start=$(now) checks=0 pause=0.1
while :; do
  checks=$((checks + 1))
  if {command}; then echo "trainyard: drained: drain_check exited 0 (check $checks)"; exit 0; fi
  if [ $(($(now) - start)) -ge "$2" ]; then
    echo "trainyard: timeout: drain_check still failing after $checks check(s)"; exit 0
  fi
  sleep "$pause" 2> /dev/null || sleep 1
  case $pause in 0.1) pause=0.2 ;; 0.2) pause=0.5 ;; *) pause=1 ;; esac
done
"""
_DRAIN_NO_CHECK = 'echo "trainyard: no drain_check"\n'


@dataclass
class RolloutTarget:
    key: object  # the caller's id for the node (a Node pk)
    name: str
    transport: Callable[[], AbstractContextManager]  # opens a Transport to the node
    base: str  # base path on the node
    host: str
    port: int  # app port
    env: dict  # for install/run/drain commands, as deploy_release's env
    off_cycle: bool = False


@dataclass
class NodeOutcome:
    """One node of the rollout. `ok`: the deploy of the SHA on this node succeeded (a later
    rollback does not change it). `switched`: `current` was changed on it. `rolled_back`:
    it was put back to `previous_sha` (by its own failed deploy or after a failure
    elsewhere; with no previous release: app stopped, `current` removed). `message`: the
    last word on the node (the deploy's, then the rollback's)."""

    key: object
    name: str
    ok: bool
    message: str
    previous_sha: str | None = None
    switched: bool = False
    rolled_back: bool = False
    log: str = ""
    failed_step: str = ""  # the step that failed the node (drain, health...), if one did
    failure: str = ""  # why, in one line


@dataclass
class RolloutResult:
    ok: bool
    message: str  # one sentence
    outcomes: list = field(default_factory=list)  # the nodes started, in start order
    batches: list = field(default_factory=list)  # node names per batch: the whole plan


def plan_batches(targets, batch_size):
    """Every off-cycle target as the first batch, then the others `batch_size` at a time."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise DeployError(f"batch_size must be a positive integer: {batch_size!r}")
    off_cycle = [t for t in targets if t.off_cycle]
    rest = [t for t in targets if not t.off_cycle]
    return ([off_cycle] if off_cycle else []) + [rest[i:i + batch_size]
                                                 for i in range(0, len(rest), batch_size)]


def rollout(targets, sha, archive_path, checksum, steps, *, batch_size=10, log=None,
            on_node_start=None, on_node_done=None, on_tick=None, cancel=None):
    """Deploy `sha` to `targets` batch by batch, as the module docstring guarantees.
    Raises DeployError on bad input (SHA, checksum, batch size, duplicate names)."""
    validate_sha(sha)
    if not isinstance(checksum, str) or not CHECKSUM_RE.fullmatch(checksum):
        raise DeployError(f"not a sha256 hex digest: {checksum!r}")
    targets = list(targets)
    names = [t.name for t in targets]
    if len(set(names)) != len(names):
        raise DeployError(f"node names must be unique: {', '.join(names)}")
    batches = plan_batches(targets, batch_size)
    plan = [[t.name for t in batch] for batch in batches]
    if not targets:
        return RolloutResult(False, f"no nodes to deploy {sha[:SHORT_SHA]} to", [], plan)
    run = _Rollout(sha, archive_path, checksum, steps, log=log, on_node_start=on_node_start,
                   on_node_done=on_node_done, on_tick=on_tick, cancel=cancel)
    return run.run(batches, plan)


class _Rollout:
    def __init__(self, sha, archive_path, checksum, steps, *, log, on_node_start, on_node_done,
                 on_tick, cancel):
        self.sha, self.archive_path, self.checksum, self.steps = sha, archive_path, checksum, steps
        self.log = log or (lambda line: None)
        self.on_node_start, self.on_node_done = on_node_start, on_node_done
        self.on_tick, self.cancel = on_tick, cancel
        self.events = queue.SimpleQueue()  # from the worker threads to the caller's thread
        self.outcomes = []  # (target, NodeOutcome) in the order the nodes finished
        self.lines = {}  # node name -> its log lines (NodeOutcome.log), kept in this thread
        self.callback_error = None
        self.last_tick = time.monotonic()

    # The plan ---------------------------------------------------------------------------

    def run(self, batches, plan):
        started = 0
        for number, batch in enumerate(batches, 1):
            if self.failed() or (self.cancel is not None and self.cancel.is_set()):
                break
            kind = " (off-cycle)" if batch[0].off_cycle else ""
            self.say(f"batch {number}/{len(batches)}{kind}: {', '.join(t.name for t in batch)}")
            self.in_threads(batch, self.deploy_node)
            started = number
        untouched = [t for batch in batches[started:] for t in batch]
        if started == len(batches) and not self.failed():  # a cancel after the end changes nothing
            self.say(f"OK {self.sha} is live on {len(self.outcomes)} node(s)")
            return RolloutResult(True, f"deployed {self.sha[:SHORT_SHA]} to {len(self.outcomes)} "
                                 f"node{'s' if len(self.outcomes) != 1 else ''} in {len(batches)} "
                                 f"batch{'es' if len(batches) != 1 else ''}",
                                 [o for _, o in self.outcomes], plan)
        why = self.why_stopped()
        self.say(f"stopping: {why}")
        order = {t.name: i for i, t in enumerate(t for batch in batches for t in batch)}
        back = sorted(((t, o) for t, o in self.outcomes if o.ok and o.switched),
                      key=lambda pair: order[pair[0].name])
        if back:
            self.say(f"rolling back {', '.join(t.name for t, _ in back)}")
            self.in_threads([t for t, _ in back], self.roll_back_node,
                            {t.name: o for t, o in back})
        message = _failure_sentence(why, back, untouched)
        self.say(f"FAILED {message}")
        return RolloutResult(False, message, [o for _, o in self.outcomes], plan)

    def failed(self):
        return any(not o.ok for _, o in self.outcomes) or self.callback_error is not None

    def why_stopped(self):
        failed = [(t, o) for t, o in self.outcomes if not o.ok]
        parts = [_describe_failure(t, o) for t, o in failed]
        if self.callback_error:
            parts.append(self.callback_error)
        if not parts:
            parts.append("the rollout was cancelled")
        return "; ".join(parts)

    # Threads, and callbacks in the caller's thread ----------------------------------------

    def in_threads(self, batch, work, *extra):
        """Run `work(target, *extra)` for each target in a thread of its own, serving their
        callbacks here until all of them are finished."""
        with ThreadPoolExecutor(len(batch), thread_name_prefix="rollout") as pool:
            for target in batch:
                pool.submit(self.guarded, work, target, *extra)
            finished = 0
            while finished < len(batch):
                try:
                    kind, *args = self.events.get(timeout=TICK_SECONDS)
                except queue.Empty:
                    kind = None
                if kind == "finished":
                    finished += 1
                elif kind is not None:
                    getattr(self, f"serve_{kind}")(*args)
                self.tick()

    def guarded(self, work, target, *extra):
        try:
            work(target, *extra)
        except Exception as exc:  # noqa: BLE001 - a bug here must not hang the rollout
            self.events.put(("log", target.name, f"!! unexpected error: {exc!r}"))
            self.events.put(("done", target, NodeOutcome(target.key, target.name, False,
                                                         f"unexpected error: {exc!r}")))
        finally:
            self.events.put(("finished",))

    def tick(self):
        if self.on_tick is not None and time.monotonic() - self.last_tick >= TICK_SECONDS:
            self.last_tick = time.monotonic()
            self.call("on_tick", self.on_tick)

    def call(self, name, function, *args):
        try:
            function(*args)
        except Exception as exc:  # noqa: BLE001 - reported, and stops the rollout
            self.callback_error = self.callback_error or f"{name} raised {exc!r}"
            return False
        return True

    def serve_log(self, name, line):
        self.lines.setdefault(name, []).append(line)
        self.call("log", self.log, f"{name}: {line}")

    def serve_start(self, target, answer):
        answer["ok"] = self.on_node_start is None or self.call("on_node_start", self.on_node_start,
                                                               target)
        answer["event"].set()

    def serve_done(self, target, outcome):
        # The node's log lines were queued before "done", by the same thread: all are here.
        outcome.log = "\n".join(self.lines.get(target.name, []))
        if not any(o is outcome for _, o in self.outcomes):
            self.outcomes.append((target, outcome))
        if self.on_node_done is not None:
            self.call("on_node_done", self.on_node_done, target, outcome)

    def say(self, line):
        self.call("log", self.log, f"rollout: {line}")

    def node_log(self, target):
        """A `log` for the worker thread of `target`: lines go to the caller's thread."""
        return lambda line: self.events.put(("log", target.name, line))

    # One node ---------------------------------------------------------------------------

    def deploy_node(self, target):
        say = self.node_log(target)
        answer = {"event": threading.Event(), "ok": False}
        self.events.put(("start", target, answer))
        answer["event"].wait()
        if not answer["ok"]:
            outcome = NodeOutcome(target.key, target.name, False, "on_node_start failed: the node "
                                  "was not touched", failed_step="on_node_start")
        else:
            outcome = self.drain_and_deploy(target, say)
        self.events.put(("done", target, outcome))

    def drain_and_deploy(self, target, say):
        steps = self.steps
        with target.transport() as transport:
            drained_from = None
            if steps.drain or steps.drain_check:
                node = _Node(transport, target.base, log=say, env=target.env, cancel=self.cancel)
                try:
                    drained_from = _drain(node, steps)
                except StepFailed as exc:
                    return NodeOutcome(target.key, target.name, False, f"not deployed: {exc}",
                                       failed_step="drain", failure=_step_detail(node.steps))
            result = deploy_release(transport, target.base, self.sha, self.archive_path,
                                    self.checksum, steps, env=target.env, log=say, host=target.host,
                                    port=target.port, cancel=self.cancel)
        failed = [s for s in result.steps if not s.ok and s.name not in ("discard", "rollback")]
        return NodeOutcome(target.key, target.name, result.ok, result.message,
                           previous_sha=result.previous_sha or drained_from,
                           switched=any(s.name == "switch" for s in result.steps),
                           rolled_back=result.rolled_back,
                           failed_step=failed[0].name if failed else "",
                           failure=_first_line(failed[0].detail if failed else "" if result.ok
                                               else result.message))

    def roll_back_node(self, target, outcomes):
        outcome = outcomes[target.name]
        say = self.node_log(target)
        say(f"--> rolling back from {self.sha} to {outcome.previous_sha or 'no release'}")
        try:
            with target.transport() as transport:
                if outcome.previous_sha:
                    result = rollback(transport, target.base, to_sha=outcome.previous_sha,
                                      steps=self.steps, env=target.env, log=say, host=target.host,
                                      port=target.port)
                    ok, message = result.ok, result.message
                else:
                    ok, message = _remove_release(_Node(transport, target.base, log=say,
                                                        env=target.env), self.steps)
        except Exception as exc:  # noqa: BLE001 - a node that cannot be reached, a bug: say so
            ok, message = False, f"rollback failed: {exc}"
        outcome.rolled_back = ok
        outcome.message = message if ok else f"{message} (it still runs {self.sha})"
        self.events.put(("done", target, outcome))


def _drain_script(drain, check):
    script = _DRAIN_HEAD
    if drain:
        script += _DRAIN_RUN.format(command=shlex.join(drain))
    return script + (_DRAIN_WAIT.format(command=shlex.join(check)) if check else _DRAIN_NO_CHECK)


def _drain(node, steps):
    """Drain and wait for drain_check, as one command in `<base>/current`. Returns the SHA
    `current` pointed at (None: no release, nothing drained). Raises StepFailed if
    `drain` fails; a drain_check that never passes only costs `drain_timeout`."""
    drain = expand(steps.drain, node.env) if steps.drain else None
    check = expand(steps.drain_check, node.env) if steps.drain_check else None
    limit = max(0, round(steps.drain_timeout * 100))
    name = (f"<in current: {shlex.join(drain) if drain else 'no drain'}, then "
            + (f"{shlex.join(check)} until it exits 0, up to {steps.drain_timeout:g}s>" if check
               else "no drain_check>"))
    with node.step("drain"):
        output = node.script(_drain_script(drain, check), [node.base, str(limit)], name=name,
                             env=node.env, timeout=steps.drain_timeout + COMMAND_TIMEOUT)
        printed = output.rstrip("\n").splitlines() or [""]
        for line in printed:
            node.log(printable(line))
        if printed[0].startswith("trainyard: no release"):
            return None
        if printed[-1].startswith("trainyard: drain failed"):
            raise StepFailed(f"`{shlex.join(drain)}` {printed[-1].partition('failed: ')[2]}")
        if "trainyard: timeout" in printed[-1]:
            node.log(f"drain_timeout ({steps.drain_timeout:g}s) passed before drain_check "
                     "exited 0: deploying anyway")
    previous = printed[0].rpartition("/")[2].strip()
    return previous if SHA_RE.fullmatch(previous) else None


def _remove_release(node, steps):
    """Undo a first deploy: stop the app, remove `current` -> (ok, message)."""
    try:
        with node.step("stop"):
            if steps.run:
                stop_managed(node, steps)
            elif steps.stop:
                node.run(expand(steps.stop, node.env), cwd=node.path("current"), env=node.env,
                         timeout=steps.stop_command_timeout)
        with node.step("remove current"):
            node.set_links(("current", None))
    except StepFailed as exc:
        return False, f"there was no previous release; removing this one failed: {exc}"
    message = "there was no previous release: its app is stopped and `current` removed"
    node.log(message)
    return True, message


def _first_line(text):
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return line[:REASON_SHOWN] + ("…" if len(line) > REASON_SHOWN else "")


def _step_detail(steps):
    return _first_line(steps[-1].detail) if steps and not steps[-1].ok else ""


def _describe_failure(target, outcome):
    what = {"health": "failed its health check", "drain": "failed to drain"}.get(
        outcome.failed_step, f"failed at {outcome.failed_step}" if outcome.failed_step else "failed")
    text = f"{target.name} {what}: {outcome.failure or _first_line(outcome.message)}"
    if outcome.rolled_back:
        text += f" (it is back on {outcome.previous_sha[:SHORT_SHA]})" if outcome.previous_sha \
            else " (it had no previous release: `current` removed)"
    return text


def _failure_sentence(why, back, untouched):
    parts = [why]
    done = [t.name for t, o in back if o.rolled_back]
    if done:
        parts.append(f"rolled back {', '.join(done)}")
    bare = [t.name for t, o in back if o.rolled_back and not o.previous_sha]
    if bare:
        parts.append(f"{', '.join(bare)} had no previous release: app stopped, `current` removed")
    stuck = [f"{t.name} ({_first_line(o.message)})" for t, o in back if not o.rolled_back]
    if stuck:
        parts.append(f"could NOT roll back {', '.join(stuck)}")
    if untouched:
        parts.append(f"{', '.join(t.name for t in untouched)} untouched")
    return "; ".join(parts)
