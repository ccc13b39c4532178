"""Helpers shared by the tests: waiting on conditions, real git repositories, free ports."""

import os
import random
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI") == "true"

GIT_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_AUTHOR_NAME": "Ari Author",
    "GIT_AUTHOR_EMAIL": "ari@example.com",
    "GIT_COMMITTER_NAME": "Ari Author",
    "GIT_COMMITTER_EMAIL": "ari@example.com",
    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
    "HOME": "/nonexistent",
}

FAST_SPEC = """\
checks:
  lint: python3 -c "print('lint ok')"
  unit: python3 -c "print('unit ok')"
"""


def require(condition, why):
    """Skip a test whose real part is missing on a developer machine; in CI, fail loudly."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required in CI: {why}")
    pytest.skip(why)


def wait_until(predicate, timeout=30.0, interval=0.05, message="condition"):
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def port_closed(port):
    """True when nothing listens on the loopback `port` (a process holding it has ended)."""
    try:
        socket.create_connection(("127.0.0.1", port), 0.5).close()
    except OSError:
        return True
    return False


# Below Linux's ephemeral range (32768-60999): a port the kernel hands out for port 0 is
# also the local port of the next outgoing connection, so an app told to listen on it a
# few seconds later could find it taken by a health check or a database connection.
_PORTS = range(20000, 32000)


def free_port():
    """A loopback port nothing listens on or connects from now, outside the ephemeral range."""
    for _ in range(200):
        port = random.choice(_PORTS)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free loopback port in 20000-31999")


class GitRepo:
    """A real git repository in a temp folder, with helpers to commit to branches."""

    def __init__(self, path):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.git("init", "-q", "-b", "master")

    def git(self, *args, env=None):
        proc = subprocess.run(["git", *args], cwd=self.path, env={**GIT_ENV, **(env or {})},
                              capture_output=True, text=True, check=True)
        return proc.stdout.strip()

    def commit(self, files, message="change", branch="master", author=None):
        """Write `files` ({path: text or None to delete}) on `branch` and commit. Returns the SHA."""
        branches = self.git("branch", "--list", "--format=%(refname:short)").split()
        if not branches and branch != "master":
            self.commit({}, message="Initial commit")  # branches start from master
            branches = ["master"]
        if branch in branches:
            self.git("checkout", "-q", branch)
        elif branches:
            self.git("checkout", "-q", "-b", branch, "master")
        for rel, content in files.items():
            target = self.path / rel
            if content is None:
                target.unlink()
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                target.write_bytes(content)
            else:
                target.write_text(content)
        self.git("add", "-A")
        env = {}
        if author:
            name, email = author
            env = {"GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": email}
        self.git("commit", "-q", "--allow-empty", "-m", message, env=env)
        sha = self.git("rev-parse", "HEAD")
        self.git("checkout", "-q", "master")
        return sha

    def head(self, branch="master"):
        return self.git("rev-parse", f"refs/heads/{branch}")


def off_main_thread(func, *args, **kwargs):
    """Call `func` in a thread of its own, as a web request or a task would.

    Playwright's event loop runs in the main thread, and `async_to_sync` (which
    publishes events after commit) refuses to run beside a running loop.
    """
    outcome = {}

    def target():
        try:
            outcome["value"] = func(*args, **kwargs)
        except BaseException as exc:  # handed to the test below
            outcome["error"] = exc
        finally:
            from django.db import connections

            connections.close_all()

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), f"{func.__name__} did not return within 60 s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def build_ended(build, timeout=120):
    """Wait for a build to end (a real worker runs it); returns it refreshed."""
    from pipeline.models import Build

    def ended():
        build.refresh_from_db()
        return build.status in Build.ENDED

    wait_until(ended, timeout=timeout, message=f"build #{build.pk} to end")
    return build


def race(func, args_list):
    """Call `func(*args)` for each args tuple from its own thread, all released at once
    (a barrier), each thread on its own database connection. Returns the results in
    order; an exception in any thread is raised here after all have finished."""
    from django.db import connection

    barrier = threading.Barrier(len(args_list))
    outcomes = [None] * len(args_list)

    def contender(index, args):
        barrier.wait()
        try:
            outcomes[index] = ("ok", func(*args))
        except BaseException as exc:  # handed to the caller below
            outcomes[index] = ("error", exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=contender, args=(i, a)) for i, a in enumerate(args_list)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for kind, value in outcomes:
        if kind == "error":
            raise value
    return [value for _, value in outcomes]


class Gate:
    """Holds a check until the test opens it. Sandboxed checks cannot see the test's files,
    but they share the loopback network: the check's script polls a port until it answers.

    `gate.script(before, after)` is Python for the check; `gate.open()` lets it go on.
    """

    def __init__(self):
        self.port = free_port()
        self._listener = None

    def script(self, before="", after=""):
        lines = ["import socket, time"]
        if before:
            lines.append(f"print({before!r}, flush=True)")
        lines += ["while True:",
                  "    try:",
                  f"        socket.create_connection(('127.0.0.1', {self.port}), 1).close()",
                  "        break",
                  "    except OSError:",
                  "        time.sleep(0.02)"]
        if after:
            lines.append(f"print({after!r}, flush=True)")
        return "\n".join(lines) + "\n"

    def open(self):
        if self._listener is not None:
            return  # already open
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._listener.listen(50)

    def close(self):
        if self._listener is not None:
            self._listener.close()
            self._listener = None
