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
TRAIN_NODE_OFFSET, TRAIN_NODE_COUNT = 100, 6  # the train's nodes: NODE_FIRST_PORT + 100 on


def free_node_ports():
    """A NODE_FIRST_PORT whose branch ports and train ports (100 further) are all free."""
    import socket

    for _ in range(50):
        first = free_port()
        if first + TRAIN_NODE_OFFSET + TRAIN_NODE_COUNT > 65000:
            continue
        ports = [*range(first, first + NODE_COUNT),
                 *range(first + TRAIN_NODE_OFFSET, first + TRAIN_NODE_OFFSET + TRAIN_NODE_COUNT)]
        sockets = []
        try:
            for port in ports:
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


class Server:
    """`manage.py standalone` in its own process group, logging to `log_path`."""

    def __init__(self, env, log_path):
        self.port, self.log_path = free_port(), log_path
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "manage.py", "standalone", "--port", str(self.port)], cwd=ROOT,
            env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_until(self.answers, timeout=90, interval=0.2, message="the standalone server")
        except BaseException:
            self.stop()
            raise

    def answers(self):
        assert self.proc.poll() is None, self.log_path.read_text()
        try:
            return urllib.request.urlopen(self.url + "/", timeout=2).status == 200
        except OSError:
            return False

    def stop(self):
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass  # it already died: its log is in the failure above
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()


@pytest.fixture
def standalone_env(tmp_path, setup_cache_dir):
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE", "TRAINYARD_ENV")}
    env["TRAINYARD_VAR_DIR"] = str(tmp_path / "var")
    # The session's setup cache, as a worker host keeps it: the demo's .venv is built once.
    env["TRAINYARD_CACHE_DIR"] = str(setup_cache_dir)
    env["TRAINYARD_NODE_FIRST_PORT"] = str(free_node_ports())
    return env


@pytest.fixture
def standalone(tmp_path, standalone_env):
    server = None
    try:
        server = Server(standalone_env, tmp_path / "server.log")
        yield server.url, standalone_env, tmp_path, server.proc
    finally:
        stop_node_apps(tmp_path / "var")
        if server:
            server.stop()


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
    # a node's port for the next run to trip over. SIGTERM, as `kill`, systemd or Docker stop
    # it (Ctrl+C, SIGINT, ends in a KeyboardInterrupt that unwinds the same way).
    server.send_signal(signal.SIGTERM)
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


def node_list(url, var):
    """The pool as the running server's API gives it: name -> the fields that matter here."""
    import json

    request = urllib.request.Request(f"{url}/api/nodes", headers={
        "Authorization": f"Bearer {(var / 'api-token').read_text().strip()}",
        "Accept": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        nodes = json.loads(response.read())["nodes"]
    return {node["name"]: (node["repository"], node["environment"], node["off_cycle"],
                           node["transport"], node["app_port"], node["base_path"])
            for node in nodes}


def test_it_makes_the_train_world_once_and_keeps_it_across_restarts(standalone):
    """Nodes for every environment and the demo's authors, created at the first start,
    found again (not made again) at the next."""
    url, env, tmp, server = standalone
    var, first_port = tmp / "var", int(env["TRAINYARD_NODE_FIRST_PORT"])
    log = (tmp / "server.log").read_text()
    passwords = {}
    for name in ("alice", "bob"):
        kept = var / f"{name}-credentials.txt"
        assert stat.S_IMODE(kept.stat().st_mode) == 0o600, name
        passwords[name] = kept.read_text().split("password: ")[1].strip()
        assert f"{name} login (shown once, kept in {kept}): {name} / {passwords[name]}" in log
    nodes = node_list(url, var)
    train = {name: row for name, row in nodes.items() if not name.startswith("branch-")}
    environments = ["staging", "preview", "preprod", "production", "production", "production"]
    assert train == {
        name: ("demo", environment, name == "production-1", "local", port,
               str(var / "nodes" / name))
        for name, environment, port in zip(
            ["staging-1", "preview-1", "preprod-1", "production-1", "production-2",
             "production-3"], environments, range(first_port + 100, first_port + 106),
            strict=True)}
    assert len(nodes) == NODE_COUNT + len(train)

    os.killpg(server.pid, signal.SIGTERM)
    server.wait(30)
    again = Server(env, tmp / "server-again.log")
    try:
        log = (tmp / "server-again.log").read_text()
        for name in ("alice", "bob"):
            assert f"{name} login: see {var / f'{name}-credentials.txt'}" in log
            assert passwords[name] not in log
            assert passwords[name] in (var / f"{name}-credentials.txt").read_text()
        assert node_list(again.url, var) == nodes
    finally:
        again.stop()
