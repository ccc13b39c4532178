"""Run a job's user commands (setup, then its own command) in its own checkout and sandbox.

Each job makes its own clean checkout of the build's SHA on the host that runs it, from
that host's mirror: no job depends on files another task made, so any number of worker
hosts can share the work (only the database and the broker are shared).
"""

import json
import os
import platform
import posixpath
import threading
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings

from nodes.transports import LocalTransport, TransportError
from pipeline import sandbox
from pipeline.models import Variable
from pipeline.services import cache, git, trash

DISK_CHECK_SECONDS = 2.0
PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass
class JobWorkspace:
    root: Path

    @property
    def src(self):
        return self.root / "src"

    @property
    def home(self):
        return self.root / "home"

    @classmethod
    def for_job(cls, job):
        return cls(Path(settings.TRAINYARD["WORKSPACE_DIR"]) / "jobs" / str(job.pk))

    def create(self, repository, sha):
        """A fresh checkout of `sha` (leftovers of an earlier attempt are removed first)."""
        self.remove()
        self.root.mkdir(parents=True)
        self.home.mkdir()
        git.checkout(repository, sha, self.src)

    def remove(self):
        """Free the job's path at once; the files go later (see pipeline.services.trash)."""
        trash.discard(self.root)

    def size(self):
        total = 0
        stack = [self.root]
        while stack:
            try:
                entries = list(Path(stack.pop()).iterdir())
            except OSError:
                continue
            for entry in entries:
                try:
                    info = entry.lstat()
                except OSError:
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    stack.append(entry)
                else:
                    total += info.st_blocks * 512
        return total


@dataclass
class JobContext:
    """Everything a user command of this job runs with."""

    job: object
    workspace: JobWorkspace
    mode: str
    env: dict
    secrets: list = field(default_factory=list)
    extra_ro_binds: tuple = ()

    @property
    def inside_workspace(self):
        return sandbox.WORKSPACE if self.mode == "bwrap" else str(self.workspace.src)

    @property
    def inside_home(self):
        return sandbox.HOME if self.mode == "bwrap" else str(self.workspace.home)


def job_context(job, spec, workspace, mode, extra_env=None):
    """The job's environment, built from scratch: none of Trainyard's own settings or
    secrets. Later entries win: the spec's `env`, the check's `env`, the repository's
    variables, then what Trainyard itself sets (never overridden)."""
    build = job.build
    command = _spec_command(job, spec)
    variables = list(Variable.objects.filter(repository_id=build.repository_id))
    ctx = JobContext(job=job, workspace=workspace, mode=mode, env={},
                     secrets=[v.value for v in variables if v.secret and v.value],
                     extra_ro_binds=(str(git.objects_path(build.repository)),))
    ctx.env = {"PATH": PATH, "LANG": "C.UTF-8", "CI": "true"}
    ctx.env.update(spec.env)
    ctx.env.update(command.env if command else {})
    ctx.env.update({v.name: v.value for v in variables})
    ctx.env.update({
        "HOME": ctx.inside_home,
        "TRAINYARD": "1",
        "TRAINYARD_WORKSPACE": ctx.inside_workspace,
        "TRAINYARD_BUILD_ID": str(build.pk),
        "TRAINYARD_JOB": job.name,
        "TRAINYARD_SHA": build.sha,
        "TRAINYARD_BRANCH": build.branch,
        "TRAINYARD_REPOSITORY": build.repository.name,
        **(extra_env or {}),
    })
    return ctx


def _spec_command(job, spec):
    if job.stage == "checks":
        return spec.checks.get(job.name)
    return getattr(spec, job.stage, None)


class DiskWatch:
    """Stops a command whose workspace grows past the limit (checked every 2 s)."""

    def __init__(self, workspace, on_tick):
        self.workspace = workspace
        self.limit = settings.TRAINYARD["WORKSPACE_MAX_BYTES"]
        self.on_tick = on_tick
        self.cancel = threading.Event()
        self.exceeded = False
        self.checked_at = time.monotonic()

    def tick(self):
        if self.on_tick:
            self.on_tick()
        if time.monotonic() - self.checked_at < DISK_CHECK_SECONDS:
            return
        self.checked_at = time.monotonic()
        if self.workspace.size() > self.limit:
            self.exceeded = True
            self.cancel.set()

    def describe(self):
        return (f"killed: its workspace grew past {self.limit // 1024**2} MiB "
                "(TRAINYARD_WORKSPACE_MAX_BYTES)")


def run_command(ctx, argv, *, timeout, log):
    """Run one user command in the job's sandbox. Returns (CommandResult, message)."""
    from pipeline.services.jobs import expand_variables

    argv = expand_variables(argv, ctx.env)
    if not _command_exists(ctx, argv[0]):
        raise TransportError(f"command not found: {argv[0]}")
    wrapped, env, cwd = sandbox.wrap(argv, workspace=ctx.workspace.src, home=ctx.workspace.home,
                                     env=ctx.env, mode=ctx.mode,
                                     extra_ro_binds=ctx.extra_ro_binds)
    watch = DiskWatch(ctx.workspace, getattr(log, "tick", None))
    result = LocalTransport().run(
        wrapped, cwd=cwd, env=env, timeout=max(1, timeout), on_output=log.write,
        output_cap=settings.TRAINYARD["OUTPUT_CAP_BYTES"], on_tick=watch.tick,
        cancel=watch.cancel)
    message = watch.describe() if watch.exceeded else result.describe(ctx.job.timeout)
    return result, message


def _command_exists(ctx, name):
    """Look the program up as the sandbox will (its PATH, its /workspace), so a missing tool
    is named as such instead of surfacing as bubblewrap's exit status."""
    if "/" in name:
        candidates = [posixpath.join(ctx.inside_workspace, name)]
    else:
        candidates = [posixpath.join(folder, name)
                      for folder in ctx.env.get("PATH", PATH).split(":") if folder]
    for inside in candidates:
        host = _host_path(ctx, posixpath.normpath(inside))
        if host is None or (os.path.isfile(host) and os.access(host, os.X_OK)):
            return True  # found, or somewhere we cannot see from here: let it run
    return False


def _host_path(ctx, inside):
    cached = [(posixpath.join(ctx.inside_workspace, rel), source)
              for source, rel in (b for b in ctx.extra_ro_binds if isinstance(b, tuple))]
    for mount, host in (*cached, (ctx.inside_workspace, ctx.workspace.src),
                        (ctx.inside_home, ctx.workspace.home)):
        if inside == mount or inside.startswith(mount + "/"):
            return str(host) + inside[len(mount):]
    if inside.startswith(("/usr/", "/bin/", "/sbin/", "/lib")):
        return inside
    return None


@contextmanager
def prepared(ctx, spec, *, deadline, log):
    """Run the spec's `setup` commands, or bring in what `cache` kept of them; yields an
    error message when setup failed, else ''. In the sandbox a cache hit copies nothing:
    the cached folders are shown read-only in place for as long as the block lasts."""
    if not spec.setup:
        yield ""
        return
    failure = []

    def fill():
        for command in spec.setup:
            log.write(f"$ {' '.join(command.argv)}    (setup)\n")
            result, message = run_command(ctx, command.argv, log=log,
                                          timeout=deadline - time.monotonic())
            if not result.ok:
                failure.append(f"setup `{' '.join(command.argv)}` {message}")
                return False
        return True

    if not spec.cache:
        fill()
        yield failure[0] if failure else ""
        return
    note = lambda text: log.write(f"[trainyard: {text.rstrip()}]\n")  # noqa: E731
    with ExitStack() as stack:
        try:
            key = cache.cache_key(ctx.workspace.src, key_files=spec.cache["key"],
                                  salt=_cache_salt(ctx, spec))
            args = (ctx.job.build.repository.name, key, spec.cache["paths"], ctx.workspace.src,
                    fill, note)
            if ctx.mode == "bwrap":
                _, binds = stack.enter_context(cache.mount_or_fill(*args))
                ctx.extra_ro_binds = (*ctx.extra_ro_binds, *binds)
            else:
                cache.restore_or_fill(*args)
        except ValueError as exc:  # a key file or path that leaves the checkout
            yield f"cache: {exc}"
            return
        yield failure[0] if failure else ""


def _cache_salt(ctx, spec):
    """What else decides what setup makes: its commands, the sandbox, and the system's
    Pythons (an upgraded interpreter must not get virtualenvs made for the old one)."""
    pythons = [os.path.realpath(p) for p in ("/usr/bin/python3", "/usr/local/bin/python3")]
    return json.dumps({"setup": [c.argv for c in spec.setup], "paths": spec.cache["paths"],
                       "env": spec.env, "mode": ctx.mode, "machine": platform.machine(),
                       "pythons": pythons})
