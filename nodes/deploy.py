"""The deploy protocol on one node, over any Transport (local or SSH). No database here:
the caller records what `DeployResult` says.

Layout on the node, Capistrano-style:

    <base>/releases/<sha>/   one folder per release, unpacked from `git archive`
    <base>/current           symlink -> releases/<sha>, switched atomically (rename)
    <base>/previous          symlink -> the release `current` replaced: the rollback target
    <base>/shared/           for the application's own use; never touched

Every command is an argument list; the SSH transport quotes each argument for the node's
shell. Steps of several plain commands (`rm` then `mkdir`, `ln` then `mv`...) send them as
one `sh -c 'a && b'` whose every argument is quoted too: one SSH channel (a round trip and
a process on the node) per step rather than per command, which is most of a deploy's cost
when 50 nodes are deployed at once.

Health is checked from the controller with urllib (`check_health`): curl may not
exist on a node, and an answer from outside also proves the node is reachable. An app that
listens only on the node's loopback therefore needs a URL reachable from the controller.

Deploying the release `current` already points at only restarts it and checks health:
its folder is in use and is never unpacked over.
"""

import gzip
import hashlib
import io
import os
import posixpath
import re
import shlex
import shutil
import subprocess
import tarfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from nodes.transports.base import TransportError

SHA_RE = re.compile(r"[0-9a-f]{40}")  # always fullmatch: `$` would let a trailing newline in
CHECKSUM_RE = re.compile(r"[0-9a-f]{64}")
KEEP_RELEASES = 5
_DIGESTS = {}  # file_sha256: (path, device, inode, size, mtime, ctime) -> hex digest
_DIGESTS_KEPT = 64
_DIGESTS_LOCK = threading.Lock()
COMMAND_TIMEOUT = 120  # mkdir, tar, ln...: generous, a big archive takes a while to unpack
INSTALL_TIMEOUT = 1800
START_TIMEOUT = 300
HEALTH_TIMEOUT = 60.0
HEALTH_INTERVAL = 0.5
HEALTH_REQUEST_TIMEOUT = 5.0
# Health URLs point at nodes, never through a proxy from the controller's environment.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class DeployError(ValueError):
    """Bad input (a SHA that is not 40 lowercase hex) or an archive that cannot be built."""


class StepFailed(Exception):
    """One step of the protocol failed; the message says which and why."""


def validate_sha(sha):
    if not isinstance(sha, str) or not SHA_RE.fullmatch(sha):
        raise DeployError(f"not a full commit SHA (40 lowercase hex): {sha!r}")
    return sha


@dataclass
class DeploySteps:
    """What the spec's `deploy:` section says to run (argv lists) and where health answers."""

    install: list | None = None
    start: list | None = None
    health: str | None = None  # URL template, e.g. "http://{host}:{port}/health"
    install_timeout: float = INSTALL_TIMEOUT
    start_timeout: float = START_TIMEOUT
    health_timeout: float = HEALTH_TIMEOUT

    @classmethod
    def from_spec(cls, deploy):
        """From `Spec.deploy` ({step: Command | url}); a Command's own timeout wins."""
        steps = cls(health=deploy.get("health"))
        for name in ("install", "start"):
            command = deploy.get(name)
            if command is not None:
                setattr(steps, name, list(getattr(command, "argv", command)))
                if getattr(command, "timeout", None):
                    setattr(steps, f"{name}_timeout", command.timeout)
        return steps


@dataclass
class StepRecord:
    name: str
    ok: bool
    duration: float
    detail: str = ""


@dataclass
class DeployResult:
    ok: bool
    message: str
    sha: str | None = None
    previous_sha: str | None = None
    rolled_back: bool = False
    steps: list = field(default_factory=list)


# The archive (on the controller) ------------------------------------------------------

def make_archive(repo_path, sha, dest_dir):
    """`git archive` of `sha` plus a REVISION file holding it -> (path of .tar.gz, sha256).

    The same commit always gives the same bytes (fixed gzip header), so the checksum is
    a property of the commit.
    """
    sha = validate_sha(sha)
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    tar_path, final = dest / f"{sha}.tar", dest / f"{sha}.tar.gz"
    proc = subprocess.run(["git", "-C", str(repo_path), "archive", "--format=tar", "-o", str(tar_path),
                           sha], capture_output=True, text=True)
    if proc.returncode != 0:
        raise DeployError(f"git archive {sha} failed: {proc.stderr.strip()}")
    _append_revision(tar_path, sha)
    part = final.with_name(final.name + ".part")
    with open(tar_path, "rb") as src, open(part, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as out:
            shutil.copyfileobj(src, out)
    tar_path.unlink()
    part.replace(final)
    return final, file_sha256(final)


def _append_revision(tar_path, sha):
    # git 2.39 has no --add-virtual-file. Appended last, it wins over a REVISION in the repo.
    with tarfile.open(tar_path, "a") as tar:
        mtime = max((m.mtime for m in tar.getmembers()), default=0)
        data = f"{sha}\n".encode()
        info = tarfile.TarInfo("REVISION")
        info.size, info.mtime, info.mode = len(data), mtime, 0o644
        tar.addfile(info, io.BytesIO(data))


def file_sha256(path):
    """The file's sha256 (hex). Remembered for that version of the file (device, inode, size,
    mtime, ctime), so that the archive of a build going to 50 nodes is read once, not 50
    times; a file changed or replaced since is read again."""
    with open(path, "rb") as handle:
        before = _file_version(path, handle)
        with _DIGESTS_LOCK:
            known = _DIGESTS.get(before)
        if known:
            return known
        digest = hashlib.sha256()
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
        if _file_version(path, handle) == before:  # not written to while it was read
            with _DIGESTS_LOCK:
                _DIGESTS[before] = digest.hexdigest()
                while len(_DIGESTS) > _DIGESTS_KEPT:
                    del _DIGESTS[next(iter(_DIGESTS))]
    return digest.hexdigest()


def _file_version(path, handle):
    st = os.fstat(handle.fileno())
    return (os.fspath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


# Health (from the controller) -----------------------------------------------------------

def health_url(template, host, port):
    """Fill `{host}` and `{port}` (plain replacement: no format-string tricks)."""
    if "{port}" in template and port is None:
        raise StepFailed(f"health URL {template} needs the node's port")
    url = template.replace("{host}", str(host)).replace("{port}", str(port))
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise StepFailed(f"health URL must be http(s): {url}")
    return url


def check_health(url, *, timeout=HEALTH_TIMEOUT, interval=HEALTH_INTERVAL, cancel=None, log=None,
                 on_tick=None):
    """GET `url` until it answers 2xx or `timeout` passes -> (ok, detail)."""
    log = log or (lambda line: None)
    deadline = time.monotonic() + timeout
    log(f"health: GET {url} (up to {timeout}s)")
    attempts, last = 0, "no attempt"
    while True:
        attempts += 1
        remaining = max(0.1, deadline - time.monotonic())
        try:
            with _DIRECT.open(url, timeout=min(HEALTH_REQUEST_TIMEOUT, remaining)) as response:
                log(f"health: {response.status} after {attempts} attempt(s)")
                return True, f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            exc.close()
            current = f"HTTP {exc.code}"
        except (OSError, ValueError) as exc:  # refused, timed out, reset, bad URL
            current = str(getattr(exc, "reason", exc))
        if current != last:
            log(f"health: {current}")
            last = current
        if time.monotonic() + interval > deadline or (cancel is not None and cancel.is_set()):
            return False, f"{last} (after {attempts} attempt(s) in {timeout}s)"
        if on_tick is not None:
            on_tick()
        time.sleep(interval)


# Talking to the node ----------------------------------------------------------------------

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

    def _run(self, argv, shown, *, cwd=None, env=None, timeout=None):
        lines = _Lines(self.log)
        timeout = timeout or self.timeout
        try:
            result = self.transport.run(argv, cwd=cwd, env=env, timeout=timeout, on_output=lines,
                                        output_cap=1 << 20, cancel=self.cancel, on_tick=self.on_tick)
        except TransportError as exc:
            lines.finish()
            raise StepFailed(str(exc)) from exc
        output = lines.finish()
        if not result.ok:
            raise StepFailed(f"`{shown}` {result.describe(timeout)}")
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
        for name in names:
            self.log(f"$ readlink -- {self.path(name)}")
        self.log(f"$ ls -1t -- {self.path('releases')}")
        lines = _Lines(self.log)
        # A TransportError goes up as it is: "cannot tell" must never read as "no release".
        result = self.transport.run(["sh", "-c", _INSPECT, "sh", self.path("releases"),
                                     *(self.path(n) for n in names)],
                                    timeout=self.timeout, on_output=lines, cancel=self.cancel,
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
            targets.setdefault(index, posixpath.basename(target.strip()))
        shas = [targets.get(str(i), "") for i in range(1, len(names) + 1)]
        return ([t if SHA_RE.fullmatch(t) else None for t in shas],
                [name for name in printed[cut + 1:] if SHA_RE.fullmatch(name)])

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


# The protocol -------------------------------------------------------------------------------

def deploy_release(transport, base, sha, archive_path, checksum, steps, *, env=None, log=None,
                   host=None, port=None, command_timeout=COMMAND_TIMEOUT, cancel=None, on_tick=None):
    """Unpack, install, switch, start, check health; roll back if start or health fail.

    `env` reaches `install` and `start` as given (LocalTransport: the whole environment;
    SSHTransport: added to the login environment). `host`/`port` fill the health URL;
    `host` defaults to the transport's host. `on_tick` is called a few times a second
    while commands run and health is polled (flush logs, heartbeat). Before the switch a
    failure leaves `current` untouched; after it, `current` goes back to the release it
    replaced.
    """
    sha = validate_sha(sha)
    if not isinstance(checksum, str) or not CHECKSUM_RE.fullmatch(checksum):
        raise DeployError(f"not a sha256 hex digest: {checksum!r}")
    node = _Node(transport, base, log=log, env=env, timeout=command_timeout, cancel=cancel,
                 on_tick=on_tick)
    host = host or getattr(transport, "host", "127.0.0.1")
    try:
        with node.step("inspect"):
            (previous, old_previous), releases = node.inspect("current", "previous")
    except StepFailed as exc:
        return node.result(False, f"deploy of {sha} did not start: {exc}", sha=sha)
    if previous == sha:
        return _restart_current(node, sha, steps, host, port)
    try:
        _prepare(node, sha, archive_path, checksum, steps)
    except StepFailed as exc:
        _discard(node, sha)
        return node.result(False, f"deploy of {sha} failed before the switch, `current` is unchanged "
                           f"({previous or 'no release'}): {exc}", sha=sha, previous_sha=previous)
    try:
        with node.step("switch"):
            node.set_links(*([("previous", previous)] if previous else []), ("current", sha))
        _start_and_check(node, steps, host, port)
    except StepFailed as exc:
        return _undo_switch(node, sha, previous, old_previous, steps, exc, host, port)
    _prune(node, [sha, *(name for name in releases if name != sha)], protect={sha, previous})
    return node.result(True, f"{sha} is live" + (f" (replacing {previous})" if previous else ""),
                       sha=sha, previous_sha=previous)


def _prepare(node, sha, archive_path, checksum, steps):
    release = node.release(sha)
    tarball = f"{release}.tar.gz"
    with node.step("prepare"):
        # Leftovers of an earlier attempt at this SHA; never the live release (checked).
        node.run_all(["rm", "-rf", "--", release, f"{tarball}.part"],
                     ["mkdir", "-p", "--", release, node.path("shared")])
    with node.step("upload"):
        node.put(archive_path, f"{tarball}.part")
    with node.step("verify"):
        _verify(node, f"{tarball}.part", checksum, tarball)
    with node.step("unpack"):
        node.run_all(["tar", "-xzf", tarball, "-C", release], ["rm", "-f", "--", tarball])
    if steps.install:
        with node.step("install"):
            node.run(steps.install, cwd=release, env=node.env, timeout=steps.install_timeout)


# $1 the upload, $2 the expected digest, $3 its final name. Prints sha256sum's line; renames
# only on a match (sha256sum prefixes a backslash when the name needed escaping).
_VERIFY = ('line=$(sha256sum -- "$1") || exit; printf "%s\\n" "$line"; sum=${line#\\\\}; '
           'if [ "${sum%% *}" = "$2" ]; then exec mv -f -- "$1" "$3"; fi')


def _verify(node, path, checksum, final):
    """Check the upload's sha256 on the node; only a verified archive gets its final name."""
    check, rename = shlex.join(["sha256sum", "--", path]), shlex.join(["mv", "-f", "--", path, final])
    node.log(f"$ {check}")
    node.log(f"$ {rename}    (if the digest is {checksum})")
    words = node._run(["sh", "-c", _VERIFY, "sh", path, checksum, final], f"{check} && {rename}").split()
    got = words[0].lstrip("\\") if words else ""
    if got != checksum:
        raise StepFailed(f"checksum mismatch for {path}: expected {checksum}, the node computed "
                         f"{got or 'nothing'}")


def _discard(node, sha):
    """Remove a release that never went live, so it can never become a rollback target."""
    release = node.release(sha)
    node.cancel = None  # a cancel stops the deploy, never its clean-up
    try:
        with node.step("discard"):
            node.run(["rm", "-rf", "--", release, f"{release}.tar.gz", f"{release}.tar.gz.part"])
    except StepFailed:
        node.log(f"(could not remove {release}; old releases are pruned on a later deploy)")


def _start_and_check(node, steps, host, port):
    if steps.start:
        with node.step("start"):
            node.run(steps.start, cwd=node.path("current"), env=node.env, timeout=steps.start_timeout)
    if steps.health:
        with node.step("health"):
            url = health_url(steps.health, host, port)
            ok, detail = check_health(url, timeout=steps.health_timeout, cancel=node.cancel,
                                      log=node.log, on_tick=node.on_tick)
            if not ok:
                raise StepFailed(f"{url}: {detail}")


def _undo_switch(node, sha, previous, old_previous, steps, error, host, port):
    """After the switch something failed: put back the release that was live."""
    fields = {"sha": sha, "previous_sha": previous}
    node.cancel = None  # a cancel stops the deploy, never the way back
    node.log(f"!! rolling back: {error}")
    try:
        with node.step("rollback"):
            # None removes a link: there was no release (or no previous one) before.
            node.set_links(("current", previous), ("previous", old_previous))
    except StepFailed as again:
        return node.result(False, f"{error}; switching back failed too, `current` may still point at "
                           f"{sha}: {again}", **fields)
    if previous is None:
        return node.result(False, f"{error}; there was no previous release, `current` removed", **fields)
    try:
        _start_and_check(node, steps, host, port)
    except StepFailed as again:
        return node.result(False, f"{error}; rolled back to {previous}, but it did not come back "
                           f"either: {again}", rolled_back=True, **fields)
    return node.result(False, f"{error}; rolled back to {previous} and restarted it",
                       rolled_back=True, **fields)


def _restart_current(node, sha, steps, host, port):
    node.log(f"{sha} is already current: restarting it, nothing is unpacked")
    try:
        _start_and_check(node, steps, host, port)
    except StepFailed as exc:
        return node.result(False, f"{sha} is already current; restarting it failed: {exc}",
                           sha=sha, previous_sha=sha)
    return node.result(True, f"{sha} was already current; restarted", sha=sha, previous_sha=sha)


def _prune(node, releases, protect):
    """Keep the KEEP_RELEASES newest release folders, and always current and previous.

    `releases` are the folders newest first: those `inspect` listed, with the new one
    first (its folder is the newest), which saves listing them again."""
    try:
        with node.step("cleanup"):
            old = [node.release(name) for name in releases[KEEP_RELEASES:] if name not in protect]
            if old:
                node.run(["rm", "-rf", "--", *old])
            else:
                node.log(f"{len(releases)} release(s) on the node: none to remove")
    except StepFailed:
        node.log("(old releases stay until the next deploy)")


def rollback(transport, base, *, to_sha=None, steps=None, env=None, log=None, host=None, port=None,
             command_timeout=COMMAND_TIMEOUT, cancel=None, on_tick=None):
    """Point `current` back at `previous` (or at `to_sha`) and restart it.

    The release rolled back from becomes `previous`, so a second rollback undoes the first.
    """
    target = validate_sha(to_sha) if to_sha else None
    steps = steps or DeploySteps()
    node = _Node(transport, base, log=log, env=env, timeout=command_timeout, cancel=cancel,
                 on_tick=on_tick)
    host = host or getattr(transport, "host", "127.0.0.1")
    current = None
    try:
        with node.step("inspect"):
            current = node.read_link("current")
            target = target or node.read_link("previous")
            _check_target(node, target, current)
        with node.step("switch"):
            node.set_links(*([("previous", current)] if current else []), ("current", target))
        _start_and_check(node, steps, host, port)
    except StepFailed as exc:
        return node.result(False, f"rollback failed: {exc}", sha=target, previous_sha=current)
    return node.result(True, f"rolled back from {current or 'no release'} to {target}", sha=target,
                       previous_sha=current, rolled_back=True)


def _check_target(node, target, current):
    if target is None:
        raise StepFailed("there is no previous release to roll back to")
    if target == current:
        raise StepFailed(f"{target} is already current")
    try:
        node.run(["test", "-d", node.release(target)])
    except StepFailed as exc:
        raise StepFailed(f"release {target} is not on the node any more") from exc


def current_release(transport, base, *, timeout=COMMAND_TIMEOUT):
    """The SHA `<base>/current` points at, or None. TransportError if the node is unreachable."""
    return _Node(transport, base, timeout=timeout).read_link("current")
