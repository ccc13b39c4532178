"""The README's first command, end to end: `manage.py standalone` (what `make run` runs)
serves Trainyard with its in-process worker, and `manage.py bb` in another process
builds the demo branches against it."""

import os
import signal
import stat
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from nodes.deploy import stop_app
from nodes.transports import LocalTransport
from tests.helpers import free_port, port_closed, wait_until

NODE_COUNT = 10


def free_port_run(count):
    """The first of `count` consecutive free loopback ports."""
    import socket

    for _ in range(50):
        first = free_port()
        if first + count > 65000:
            continue
        sockets = []
        try:
            for port in range(first, first + count):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError("no run of free ports")


def stop_node_apps(var):
    """Demo apps started on the local nodes run detached (`deploy.run`): stop them."""
    for pid_file in (var / "nodes").glob("*/shared/trainyard/app.pid"):
        stop_app(LocalTransport(), pid_file.parents[2], stop_timeout=1)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def standalone(tmp_path, setup_cache_dir):
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE", "TRAINYARD_ENV")}
    env["TRAINYARD_VAR_DIR"] = str(tmp_path / "var")
    # The session's setup cache, as a worker host keeps it: the demo's .venv is built once.
    env["TRAINYARD_CACHE_DIR"] = str(setup_cache_dir)
    env["TRAINYARD_NODE_FIRST_PORT"] = str(free_port_run(NODE_COUNT))
    port = free_port()
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen([sys.executable, "manage.py", "standalone", "--port", str(port)],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def answers():
        assert proc.poll() is None, (tmp_path / "server.log").read_text()
        try:
            return urllib.request.urlopen(url + "/", timeout=2).status == 200
        except OSError:
            return False

    try:
        wait_until(answers, timeout=90, interval=0.2, message="the standalone server")
        yield url, env, tmp_path, proc
    finally:
        stop_node_apps(tmp_path / "var")
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass  # it already died: its log is in the failure above
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def bb(url, env, branch):
    return subprocess.run([sys.executable, "manage.py", "bb", "demo", branch, "--wait",
                           "--server", url], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


def test_it_builds_the_demo_branches_from_a_second_terminal(standalone):
    url, env, tmp, server = standalone
    hello = bb(url, env, "feature/hello")
    assert hello.returncode == 0, hello.stdout + hello.stderr
    assert "build #" in hello.stdout and "passed" in hello.stdout
    for job in ("lint", "unit", "integration", "deploy", "smoke"):
        assert f"  {job}" in hello.stdout
    node_url = hello.stdout.strip().splitlines()[-1].removeprefix("running at ")
    sha = subprocess.run(["git", "-C", str(tmp / "var" / "demo-repo"), "rev-parse",
                          "feature/hello"], capture_output=True, text=True, check=True).stdout.strip()
    assert urllib.request.urlopen(node_url + "version", timeout=5).read().decode().strip() == sha
    again = bb(url, env, "feature/hello")
    assert again.returncode == 0 and again.stdout.strip().endswith(f"running at {node_url}")
    broken = bb(url, env, "feature/broken")
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert "unit           failed" in broken.stdout
    hostile = bb(url, env, "; rm -rf /")
    assert hostile.returncode == 2 and "not a valid branch name" in hostile.stderr
    missing = bb(url, env, "feature/none")
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    # The server kept serving through all of that.
    assert urllib.request.urlopen(url + "/radiators/demo/", timeout=5).status == 200
    # Stopping `make run` stops the apps it started on its local nodes: none is left holding
    # a node's port for the next run to trip over.
    server.send_signal(signal.SIGINT)
    server.wait(60)
    node_port = urllib.parse.urlsplit(node_url).port
    wait_until(lambda: port_closed(node_port), timeout=15, message="the demo app to stop")


def test_it_creates_the_admin_once_and_keeps_secrets_private(standalone):
    url, env, tmp, server = standalone
    var = tmp / "var"
    log = (tmp / "server.log").read_text()
    password = (var / "admin-credentials.txt").read_text().split("password: ")[1].strip()
    assert password in log
    for name in ("admin-credentials.txt", "api-token", "secret_key"):
        assert stat.S_IMODE((var / name).stat().st_mode) == 0o600, name
    # The database holds session keys and token hashes; the running server keeps its WAL.
    for name in ("trainyard.sqlite3", "trainyard.sqlite3-wal", "trainyard.sqlite3-shm"):
        assert stat.S_IMODE((var / name).stat().st_mode) == 0o600, name
    assert stat.S_IMODE(var.stat().st_mode) == 0o700
