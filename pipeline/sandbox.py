"""The sandbox every user command (checks, setup, smoke tests) runs in.

A command comes from a branch anybody may push, so it must not reach what Trainyard
holds: its secret key, the database, API tokens, the repository mirrors, other jobs'
workspaces, the worker's environment and processes. Under bubblewrap it sees only the
system's programs (`/usr` read-only), the few `/etc` entries that resolvers, TLS, pip and
Python read, its own checkout at WORKSPACE and its own home at HOME (both read-write), a
private `/tmp`, and its own processes.

Guarantees in mode 'bwrap':
- Everything the command starts ends when the command ends, when it is killed at its
  timeout, or when the worker dies (a private pid namespace whose pid 1 is bwrap, and
  --die-with-parent): nothing it leaves behind, even under `setsid`, outlives it.
- Its environment is exactly the `env` given (plus HOME). bwrap itself starts with an
  empty environment, because --clearenv alone leaves the caller's variables readable in
  /proc/1/environ (bwrap's own, measured on 0.8.0).
- It runs without capabilities, as uid 1000 in a user namespace of its own where the
  host allows one (else as the caller's uid); either way the files it writes in its
  workspace belong to the caller outside (the probe checks this before trusting a level).

Not covered: the network is shared, because setup installs packages from indexes. The
command can reach services on loopback and abstract unix sockets; those must require
credentials the sandbox cannot read.
"""

import functools
import os
import posixpath
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

WORKSPACE = "/workspace"  # a fixed path, so cached virtualenvs move between jobs
HOME = "/home/build"
BWRAP = shutil.which("bwrap") or "/usr/bin/bwrap"
PROBE_TIMEOUT = 10
BUILD_UID = 1000
INSTALL_HINT = ("install bubblewrap (apt-get install bubblewrap), or set TRAINYARD_SANDBOX=off"
                " to run build commands with Trainyard's own permissions")

# Tried in order; the first that works on this host is kept. A user namespace drops every
# capability even when Trainyard runs as root, and --disable-userns (bwrap >= 0.8) keeps
# the command from making another one to play root in.
ISOLATION_LEVELS = (
    ("--unshare-user", "--uid", str(BUILD_UID), "--gid", str(BUILD_UID), "--disable-userns"),
    ("--unshare-user", "--uid", str(BUILD_UID), "--gid", str(BUILD_UID)),
    (),
)
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# What resolvers, TLS, the dynamic linker, Debian's Python and pip read; never
# /etc/ssl/private, /etc/shadow or credential helpers.
ETC_ENTRIES = (
    "resolv.conf", "hosts", "host.conf", "nsswitch.conf", "gai.conf", "services", "protocols",
    "ssl/certs", "ssl/openssl.cnf", "ca-certificates", "ca-certificates.conf", "ld.so.cache",
    "localtime", "timezone", "alternatives", "mime.types", "os-release", "debian_version",
    "pip.conf", "xdg/pip", "python3", "python3.11", "python3.12", "python3.13",
)
# Our own passwd and group, so that uid 1000 is "build" with its home at HOME, and the
# host's accounts stay out of sight.
PASSWD = (f"root:x:0:0:root:/root:/bin/sh\nbuild:x:{BUILD_UID}:{BUILD_UID}:Trainyard build:{HOME}"
          ":/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n")
GROUP = f"root:x:0:\nbuild:x:{BUILD_UID}:\nnogroup:x:65534:\n"


class SandboxUnavailable(Exception):
    """The sandbox is required but cannot run here; the message says how to fix it."""


@dataclass(frozen=True)
class Probe:
    isolation: tuple | None  # the working ISOLATION_LEVELS entry; None when bwrap fails
    error: str = ""


def mode():
    """'bwrap', 'off' (TRAINYARD_SANDBOX=off) or 'unsandboxed' (standalone without bwrap).

    Raises SandboxUnavailable when bwrap does not work in production, or when the
    setting names no known sandbox (a typo must not turn the sandbox off)."""
    choice = settings.TRAINYARD.get("SANDBOX", "bwrap")
    if choice == "off":
        return "off"
    if choice != "bwrap":
        raise SandboxUnavailable(f"TRAINYARD_SANDBOX={choice!r} is unknown: use 'bwrap' or 'off'")
    probe = _probe(BWRAP)
    if probe.isolation is not None:
        return "bwrap"
    if settings.PRODUCTION:
        raise SandboxUnavailable(f"bubblewrap does not work here ({probe.error}): {INSTALL_HINT}.")
    return "unsandboxed"


def warning(mode):
    """A line for the top of the build log: empty when the sandbox is on."""
    if mode == "bwrap":
        return ""
    if mode == "off":
        return ("WARNING: the sandbox is off (TRAINYARD_SANDBOX=off): this command runs with"
                " Trainyard's own permissions and can read its secrets, database and mirrors.")
    return ("WARNING: UNSANDBOXED: bubblewrap does not work here"
            f" ({_probe(BWRAP).error}), so this command runs with Trainyard's own permissions"
            f" and can read its secrets, database and mirrors. To fix it, {INSTALL_HINT}.")


def wrap(argv, *, workspace, home, env, mode, cwd=None, extra_ro_binds=()):
    """Return (argv, env, cwd) for Popen: the command inside the sandbox of `mode`.

    `cwd` is relative to the workspace. `extra_ro_binds` are host paths shown read-only at
    the same path (the mirror's objects, so the checkout's git alternates resolve), or
    (host path, path relative to the workspace) pairs (a cached folder, shown in place)."""
    rel = _relative_cwd(cwd)
    if mode in ("off", "unsandboxed"):
        return [str(a) for a in argv], {**env, "HOME": str(home)}, str(Path(workspace, rel))
    if mode != "bwrap":
        raise ValueError(f"unknown sandbox mode {mode!r}")
    probe = _probe(BWRAP)
    if probe.isolation is None:
        raise SandboxUnavailable(f"bubblewrap does not work here ({probe.error}): {INSTALL_HINT}.")
    ro_binds = [*settings.TRAINYARD.get("SANDBOX_RO_BINDS", ()), *extra_ro_binds]
    chdir = posixpath.normpath(posixpath.join(WORKSPACE, rel))
    command = _command(BWRAP, probe.isolation, {**env, "HOME": HOME}, workspace, home,
                       ro_binds, chdir, argv)
    # bwrap starts with an empty environment: its pid 1 shows it in /proc/1/environ.
    return command, {}, str(workspace)


def _command(binary, isolation, env, workspace, home, ro_binds, chdir, argv):
    """The bwrap command line; the probe runs this same one, so what it proved holds."""
    command = [
        binary, *isolation, *_bwrap_options(env), *_system_mounts(), *_identity_mounts(),
        "--tmpfs", "/tmp", "--proc", "/proc", "--dev", "/dev",
        "--bind", str(workspace), WORKSPACE, "--bind", str(home), HOME,
        # After /tmp's tmpfs, or it would hide a bind that lies under /tmp.
        *[item for bind in ro_binds for item in ("--ro-bind", *_source_and_target(bind))],
        # The rest of the root is bwrap's own tmpfs, which no build should write to.
        "--remount-ro", "/", "--chdir", chdir, "--", *argv,
    ]
    return [str(a) for a in command]


def _source_and_target(bind):
    """A host path shown at the same path, or (host path, path inside) for a cached folder
    shown inside the workspace."""
    if isinstance(bind, tuple):
        source, inside = bind
        return str(source), posixpath.normpath(posixpath.join(WORKSPACE, str(inside)))
    return str(bind), str(bind)


def _relative_cwd(cwd):
    rel = posixpath.normpath(str(cwd or "."))
    if rel.startswith("/") or rel == ".." or rel.startswith("../"):
        raise ValueError(f"the working directory must lie inside the workspace: {cwd}")
    return rel


def _bwrap_options(env):
    options = ["--die-with-parent", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
               "--unshare-cgroup-try", "--hostname", "trainyard", "--new-session",
               "--cap-drop", "ALL", "--clearenv"]
    for name, value in env.items():
        options += ["--setenv", str(name), str(value)]
    return options


def _system_mounts():
    """/usr and the few /etc entries, read-only; merged-/usr links stay links."""
    mounts = []
    for path in SYSTEM_DIRS + tuple(f"/etc/{name}" for name in ETC_ENTRIES):
        if not os.path.lexists(path):
            continue
        if os.path.islink(path) and os.path.realpath(path).startswith("/usr/"):
            mounts += ["--symlink", os.readlink(path), path]  # e.g. /bin -> usr/bin
        elif os.path.exists(path):
            mounts += ["--ro-bind", path, path]  # a link elsewhere: bind what it points to
    return mounts


def _identity_mounts():
    folder = _identity_dir(Path(settings.VAR_DIR) / "sandbox")
    return ["--ro-bind", str(folder / "passwd"), "/etc/passwd",
            "--ro-bind", str(folder / "group"), "/etc/group"]


def _identity_dir(folder):
    """Write our passwd and group where they differ (checked on every command, so a
    cleaned var dir heals). Every writer writes the same bytes and os.replace makes each
    write whole, so concurrent workers cannot tear them."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in (("passwd", PASSWD), ("group", GROUP)):
        path = folder / name
        if not path.exists() or path.read_text() != text:
            # A name of its own per writer: threads of one worker share a pid.
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=folder)
            with os.fdopen(fd, "w") as handle:
                handle.write(text)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
    return folder


@functools.cache
def _probe(binary):
    """Run a real job sandbox once per process and keep the strongest isolation that works
    and leaves files written in the workspace to the caller."""
    error = f"{binary} not found"
    if not os.access(binary, os.X_OK):
        return Probe(None, error)
    for isolation in ISOLATION_LEVELS:
        error = _try_isolation(binary, isolation)
        if not error:
            return Probe(isolation)
    return Probe(None, error)


def _try_isolation(binary, isolation):
    """'' when this sandbox runs here; otherwise what went wrong."""
    with tempfile.TemporaryDirectory(prefix="trainyard-probe-") as tmp:
        workspace, home = Path(tmp, "workspace"), Path(tmp, "home")
        workspace.mkdir()
        home.mkdir()
        argv = _command(binary, isolation, {}, workspace, home, (), WORKSPACE, ["touch", "probe"])
        try:
            proc = subprocess.run(argv, env={}, capture_output=True, text=True,
                                  timeout=PROBE_TIMEOUT, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"{binary}: {exc}"
        if proc.returncode != 0:
            return f"{binary} exited {proc.returncode}: {proc.stderr.strip()[:300]}"
        owner = (workspace / "probe").stat().st_uid
        if owner != os.geteuid():
            return f"files written in the sandbox belong to uid {owner}, not {os.geteuid()}"
    return ""
