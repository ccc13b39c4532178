"""Fault-injection harness: real Redis servers and real Celery workers we can kill.

Tests that need it (and `bench/fault_recovery.py`) use:

- `RedisServer(port=None)`: a private `redis-server` on loopback, no persistence, its own
  folder and log file. `.url(db=0)`, `.restart()` (stop by pid, wait until the port
  refuses, start again on the same port, wait for PING), `.stop()`, `.start()`,
  `.pause()` / `.resume()` (SIGSTOP/SIGCONT: a Redis that accepts but never answers).
- `WorkerProcess(env_overrides, var_dir, name, concurrency=2, pool="threads")`: a real
  `python -m celery -A pipeline worker` subprocess in a process group of its own, its log in
  `<var_dir>/<name>.log`. `.start()` waits for "ready" in the log; `.kill()` SIGKILLs the
  whole group (a worker dying), `.stop()` asks for a warm shutdown first;
  `.wait_for_log(text, after=offset)`, `.assert_alive()`, `.owns(pid)` (is `pid` one of
  its processes, e.g. the check it runs). `BeatProcess(env_overrides, var_dir)` likewise
  runs `celery beat` (the reaper's clock).
- `find_processes(marker)`: pids whose command line contains `marker`.
- `use_broker(app, url)`: this process's `.delay()` publishes to `url` within the block.
- `database_url(settings_dict)`: a DATABASE_URL for the database Django is connected to
  (inside a test: the test database, `connection.settings_dict`).
- `terminate_backends(dbname)`: `pg_terminate_backend` every connection to `dbname` but
  the caller's own; returns how many.

The process classes are context managers; when the block raises, they print their log so
the failure report shows what the server or worker said.
"""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

from tests.helpers import free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
QUEUES = "default,checks,deploys"
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def port_open(port, host="127.0.0.1"):
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def _redis_ping(port, password=None):
    """True when a Redis server answers PING on the port (raw RESP; no client pooling)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            if password:
                sock.sendall(f"AUTH {password}\r\n".encode())
                sock.recv(64)
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _tail(path, lines=200):
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


class RedisServer:
    """A private redis-server on 127.0.0.1:`port` (a free one by default)."""

    def __init__(self, port=None, *, password=None, directory=None):
        self.port = port or free_port()
        self.password = password
        self._own_dir = directory is None
        self.dir = Path(directory or tempfile.mkdtemp(prefix=f"redis-{self.port}-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.logfile = self.dir / "redis.log"
        self.proc = None

    def url(self, db=0):
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/{db}"

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def start(self, timeout=10):
        argv = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--daemonize", "no",
                "--dir", str(self.dir), "--logfile", str(self.logfile)]
        if self.password:
            argv += ["--requirepass", self.password]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(lambda: self.proc.poll() is not None or _redis_ping(self.port, self.password),
                   timeout=timeout, message=f"redis-server on port {self.port} to answer PING")
        if self.proc.poll() is not None:
            raise RuntimeError(f"redis-server exited ({self.proc.returncode}):\n"
                               + _tail(self.logfile))
        return self

    def stop(self, sig=signal.SIGKILL, timeout=10):
        """Stop by pid (SIGKILL by default: Redis gone at once, nothing said to clients)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout)
        self.proc = None
        wait_until(lambda: not port_open(self.port), timeout=timeout,
                   message=f"port {self.port} to refuse connections")

    def restart(self, sig=signal.SIGKILL):
        """Stop, wait until the port refuses, start on the same port (empty: no persistence)."""
        self.stop(sig)
        return self.start()

    def pause(self):
        """SIGSTOP: the port still accepts connections but nothing answers (a hung Redis)."""
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self):
        self.proc.send_signal(signal.SIGCONT)

    def __enter__(self):
        return self.start()

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            print(f"--- redis-server :{self.port} log ---\n{_tail(self.logfile, 50)}")
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def use_broker(app, url):
    """Publish through `app` (what `.delay()` uses in this process) to `url` for a while.

    Celery keeps its connection and producer pools per broker URL: drop the app's references
    so the next publish opens pools for `url`, and again afterwards for the previous URL.
    """
    def switch(to):
        app.conf.broker_url = to
        app._pool = None
        amqp = app.__dict__.get("amqp")
        if amqp is not None:
            amqp._producer_pool = None

    previous = app.conf.broker_url
    switch(url)
    try:
        yield app
    finally:
        switch(previous)


def database_url(settings_dict):
    """A DATABASE_URL for Django's `settings_dict` (PostgreSQL)."""
    user = quote(settings_dict.get("USER") or "", safe="")
    password = settings_dict.get("PASSWORD") or ""
    auth = f"{user}:{quote(password, safe='')}@" if password else (f"{user}@" if user else "")
    host = settings_dict.get("HOST") or "127.0.0.1"
    port = settings_dict.get("PORT") or 5432
    return f"postgres://{auth}{host}:{port}/{quote(str(settings_dict['NAME']), safe='')}"


def terminate_backends(dbname, using="default"):
    """pg_terminate_backend every connection to `dbname` except this one's; how many."""
    from django.db import connections

    with connections[using].cursor() as cursor:
        cursor.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                       " WHERE datname = %s AND pid <> pg_backend_pid()", [dbname])
        return cursor.fetchone()[0]


def backend_count(dbname, using="default"):
    """Connections to `dbname` other than the caller's own."""
    from django.db import connections

    with connections[using].cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity"
                       " WHERE datname = %s AND pid <> pg_backend_pid()", [dbname])
        return cursor.fetchone()[0]


# Variables that must not leak from the test process into a worker.
_DROP = ("TRAINYARD_ENV", "DJANGO_ALLOW_ASYNC_UNSAFE", "PYTEST_CURRENT_TEST", "PYTEST_ADDOPTS")


class CeleryProcess:
    """`python -m celery -A pipeline <argv>` as a subprocess in a process group of its own,
    with its own var dir and log file (`<var_dir>/<name>.log`, kept across restarts).

    `env_overrides` must carry DATABASE_URL and REDIS_URL (CELERY_BROKER_URL follows
    REDIS_URL unless given); the process runs the standalone settings (TRAINYARD_ENV unset)
    with those external services and without the embedded worker.
    """

    kind = "celery"
    ready_text = ""

    def __init__(self, env_overrides, var_dir, name, argv):
        self.var_dir = Path(var_dir)
        self.name = name
        self.logfile = self.var_dir / f"{name}.log"
        env = {k: v for k, v in os.environ.items() if k not in _DROP}
        env.update({"DJANGO_SETTINGS_MODULE": "pipeline.settings",
                    "TRAINYARD_VAR_DIR": str(self.var_dir),
                    "TRAINYARD_EMBEDDED_WORKER": "0",
                    "PYTHONUNBUFFERED": "1"})
        env.update(env_overrides)
        if "REDIS_URL" in env_overrides and "CELERY_BROKER_URL" not in env_overrides:
            env["CELERY_BROKER_URL"] = env_overrides["REDIS_URL"]
        self.env = env
        self.argv = [PYTHON, "-m", "celery", "-A", "pipeline", *argv]
        self.proc = None

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def log(self):
        try:
            return self.logfile.read_text(errors="replace")
        except OSError:
            return ""

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout=60):
        """Start, and wait until the log says it is ready (failing at once if it exits)."""
        self.var_dir.mkdir(parents=True, exist_ok=True)
        offset = len(self.log())
        with open(self.logfile, "ab") as log:
            self.proc = subprocess.Popen(self.argv, cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)  # its own process group
        self.wait_for_log(self.ready_text, timeout=timeout, after=offset,
                          what=f"{self.kind} {self.name} to be ready")
        return self

    def wait_for_log(self, text, timeout=30, after=0, what=None):
        """Wait until `text` appears in the log past offset `after`; fail if the process
        exits or logs an unrecoverable error (a worker may then hang in its warm shutdown)."""
        def seen():
            log = self.log()[after:]
            if text in log:
                return True
            if not self.alive() or "Unrecoverable error" in log:
                raise AssertionError(f"{self.kind} {self.name} died ({self.proc.poll()}) while"
                                     f" waiting for {what or text!r}:\n{_tail(self.logfile)}")
            return False

        wait_until(seen, timeout=timeout, interval=0.05, message=what or repr(text))

    def assert_alive(self):
        """The process runs and never logged an unrecoverable error."""
        ok = self.alive() and "Unrecoverable error" not in self.log()
        assert ok, (f"{self.kind} {self.name} died ({self.proc and self.proc.poll()}):\n"
                    + _tail(self.logfile))

    def owns(self, pid):
        """Whether `pid` is this process or one it started (directly or not)."""
        return self.proc is not None and self.proc.pid in ancestors(pid)

    def kill(self):
        """SIGKILL the process and every process of its group (pool children, commands)."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)

    def stop(self, timeout=30):
        """Warm shutdown (SIGTERM), then SIGKILL whatever of the group is left."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def __enter__(self):
        return self.start()

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            print(f"--- {self.kind} {self.name} log ({self.logfile}) ---\n{_tail(self.logfile)}")
        self.stop()


class WorkerProcess(CeleryProcess):
    """`celery -A pipeline worker --queues default,checks,deploys -n <name>@%h`."""

    kind = "worker"
    ready_text = " ready."

    def __init__(self, env_overrides, var_dir, name, concurrency=2, pool="threads",
                 extra_args=(), loglevel="INFO"):
        super().__init__(env_overrides, var_dir, name,
                         ["worker", "--queues", QUEUES, "-n", f"{name}@%h", "--pool", pool,
                          "--concurrency", str(concurrency), "--loglevel", loglevel,
                          *extra_args])


class BeatProcess(CeleryProcess):
    """`celery -A pipeline beat` with the database scheduler (the reaper's clock)."""

    kind = "beat"
    ready_text = "beat: Starting..."

    def __init__(self, env_overrides, var_dir, name="beat", loglevel="INFO"):
        super().__init__(env_overrides, var_dir, name,
                         ["beat", "--scheduler", "django_celery_beat.schedulers:DatabaseScheduler",
                          "--loglevel", loglevel])


def ancestors(pid):
    """`pid` and its parents, up to init (from /proc)."""
    chain = []
    while pid and pid not in chain:
        chain.append(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])  # the field after the state: ppid
    return chain


def find_processes(marker):
    """Pids whose command line contains `marker` (a check's unique script name, say)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if marker in cmdline:
                found.append(int(entry.name))
    return found


def wait_for(predicate, timeout=30.0, message="condition"):
    """`wait_until` that measures: returns the seconds it took."""
    started = time.monotonic()
    wait_until(predicate, timeout=timeout, message=message)
    return time.monotonic() - started
