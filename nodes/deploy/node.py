"""Talking to the node: one deploy's commands, steps and links, over any Transport."""

import posixpath
import shlex
import time
from contextlib import contextmanager
from pathlib import Path

from nodes.transports.base import TransportError

from .app import printable
from .base import COMMAND_TIMEOUT, SHA_RE, DeployError, DeployResult, StepFailed, StepRecord


class _Lines:
    """Turns streamed output into whole lines for `log`; also keeps the text."""

    def __init__(self, log):
        self.log, self.partial, self.chunks = log, "", []

    def __call__(self, text):
        self.chunks.append(text)
        *lines, self.partial = (self.partial + text).split("\n")
        for line in lines:
            self.log(line)

    def finish(self):
        if self.partial:
            self.log(self.partial)
        self.partial = ""
        return "".join(self.chunks)


# $1 the releases folder, then links: one `<n>:<target>` line per link (empty: no link), a
# `--` line, then the release folders newest first (nothing if there is no folder yet).
_INSPECT = ('releases=$1; shift; i=0; for link in "$@"; do i=$((i+1)); '
            'printf "%s:%s\\n" "$i" "$(readlink -- "$link")"; done; echo --; '
            'ls -1t -- "$releases" 2>/dev/null; exit 0')


class _Node:
    """One deploy's view of a node: runs commands, records steps, knows the layout."""

    def __init__(self, transport, base, *, log=None, env=None, timeout=COMMAND_TIMEOUT, cancel=None,
                 on_tick=None):
        base = str(base)
        if not base.startswith("/") or "\x00" in base:
            raise DeployError(f"the base path must be absolute: {base!r}")
        self.transport, self.base = transport, base.rstrip("/") or "/"
        self.log = log or (lambda line: None)
        self.env, self.timeout, self.cancel, self.on_tick = env, timeout, cancel, on_tick
        self.steps = []

    def path(self, *parts):
        return posixpath.join(self.base, *parts)

    def release(self, sha):
        return self.path("releases", sha)

    def run(self, argv, *, cwd=None, env=None, timeout=None):
        """Run one command; its output goes to the log. Raises StepFailed unless it exits 0."""
        self.log(f"$ {shlex.join(argv)}" + (f"    (in {cwd})" if cwd else ""))
        return self._run(argv, shlex.join(argv), cwd=cwd, env=env, timeout=timeout)

    def run_all(self, *argvs):
        """Run commands one after the other while they exit 0, as one command on the node
        (`sh -c 'a && b'`, each argument quoted). Raises StepFailed unless all exit 0."""
        shown = [shlex.join(argv) for argv in argvs]
        for line in shown:
            self.log(f"$ {line}")
        script = " && ".join(shown)
        return self._run(["sh", "-c", script], script)

    def script(self, script, args, *, name, cwd=None, env=None, timeout=None):
        """Run one of Trainyard's own sh scripts with `args` and return its output, which
        is not logged as it comes: the caller logs what it means. The log shows the
        command as it ran, the script itself named by `name`."""
        self.log(f"$ {shlex.join(['sh', '-c', name, 'sh', *args])}"
                 + (f"    (in {cwd})" if cwd else ""))
        return self._run(["sh", "-c", script, "sh", *args], f"sh -c {name}", cwd=cwd, env=env,
                         timeout=timeout, quiet=True)

    def _run(self, argv, shown, *, cwd=None, env=None, timeout=None, quiet=False):
        lines = _Lines((lambda line: None) if quiet else self.log)
        timeout = timeout or self.timeout
        try:
            result = self.transport.run(argv, cwd=cwd, env=env, timeout=timeout, on_output=lines,
                                        output_cap=1 << 20, cancel=self.cancel, on_tick=self.on_tick)
        except TransportError as exc:
            lines.finish()
            raise StepFailed(str(exc)) from exc
        output = lines.finish()
        if not result.ok:
            said = printable(output.strip()[-500:]) if quiet and output.strip() else ""
            raise StepFailed(f"`{shown}` {result.describe(timeout)}" + (f": {said}" if said else ""))
        return output

    def put(self, local_path, remote_path):
        self.log(f"upload {Path(local_path).name} -> {remote_path}")
        try:
            self.transport.put_file(local_path, remote_path)
        except (TransportError, OSError) as exc:  # LocalTransport raises plain OSErrors
            raise StepFailed(f"upload failed: {exc}") from exc

    @contextmanager
    def step(self, name):
        """Times a step and records it; a failure is re-raised with the step's name."""
        started = time.monotonic()
        self.log(f"--> {name}")
        try:
            yield
        except (StepFailed, TransportError) as exc:
            self.steps.append(StepRecord(name, False, time.monotonic() - started, str(exc)))
            self.log(f"!! {name} failed: {exc}")
            raise StepFailed(f"{name} failed: {exc}") from exc
        self.steps.append(StepRecord(name, True, time.monotonic() - started))

    def read_link(self, name):
        """The SHA a link (`current`, `previous`) points at, or None if there is none."""
        self.log(f"$ readlink -- {self.path(name)}")
        lines = _Lines(self.log)
        # A TransportError goes up as it is: "cannot tell" must never read as "no release".
        result = self.transport.run(["readlink", "--", self.path(name)], timeout=self.timeout,
                                    on_output=lines, cancel=self.cancel, on_tick=self.on_tick)
        target = posixpath.basename(lines.finish().strip())
        return target if result.ok and SHA_RE.fullmatch(target) else None

    def inspect(self, *names):
        """In one command on the node: `read_link` of each name, and the release folders
        newest first (as `ls -1t` orders them) -> ([SHA or None per name], [SHA...])."""
        argv = ["sh", "-c", _INSPECT, "sh", self.path("releases"), *(self.path(n) for n in names)]
        self.log(f"$ {shlex.join(argv)}")
        lines = _Lines(lambda line: None)  # raw output is not logged: what it means is, below
        # A TransportError goes up as it is: "cannot tell" must never read as "no release".
        result = self.transport.run(argv, timeout=self.timeout, on_output=lines, cancel=self.cancel,
                                    on_tick=self.on_tick)
        output = lines.finish()
        if not result.ok:
            raise StepFailed(f"could not read {', '.join(names)} and the releases: "
                             f"{result.describe(self.timeout)}")
        printed = output.splitlines()
        cut = printed.index("--") if "--" in printed else len(printed)
        targets = {}
        for line in printed[:cut]:
            index, _, target = line.partition(":")
            targets.setdefault(index, target.strip())
        links = [targets.get(str(i), "") for i in range(1, len(names) + 1)]
        shas = [posixpath.basename(t) if SHA_RE.fullmatch(posixpath.basename(t)) else None
                for t in links]
        for name, target in zip(names, links, strict=True):
            self.log(f"{name} -> {printable(target)}" if target else f"{name}: no link")
        releases = [name for name in printed[cut + 1:] if SHA_RE.fullmatch(name)]
        self.log(f"releases on the node, newest first: {', '.join(releases) or 'none'}")
        return shas, releases

    def set_link(self, name, sha):
        """Point `name` at releases/<sha> atomically (rename over it), or remove it."""
        self.set_links((name, sha))

    def set_links(self, *links):
        """`set_link` for each (name, sha) in order, as one command; stops at a failure."""
        commands = []
        for name, sha in links:
            link = self.path(name)
            if sha is None:
                commands.append(["rm", "-f", "--", link])
            else:
                commands += [["ln", "-sfn", f"releases/{sha}", f"{link}.tmp"],
                             ["mv", "-Tf", f"{link}.tmp", link]]
        self.run_all(*commands)

    def result(self, ok, message, **fields):
        self.log(("OK " if ok else "FAILED ") + message)
        return DeployResult(ok=ok, message=message, steps=self.steps, **fields)
