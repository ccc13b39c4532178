"""The production rollout (nodes/deploy/rollout.py): off-cycle nodes first, then batches;
drain, switch, prove live; a failure stops the rollout and rolls back what it touched.

Nodes are folders on this machine with a real HTTP app started by `run:` on a port of
its own (LocalTransport; one test goes through real sshd), released from a real git
repository, so the tests read `current`, pid files and the apps' answers directly.
"""

import os
import re
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

from nodes.deploy import DeploySteps, RolloutTarget, make_archive, plan_batches, rollout, stop_app
from nodes.transports import LocalTransport
from nodes.transports.ssh import SSHTransport
from tests.helpers import GitRepo, free_port, port_closed, wait_until
from tests.sshd import process_alive

PY = sys.executable
# Answers every GET with "ok <its REVISION>"; /health with 503 on a node whose
# UNHEALTHY_SHA names this release (how one node's new release fails its health check).
SERVER = """\
import http.server, os, pathlib, sys
sha = pathlib.Path("REVISION").read_text().strip()
unhealthy = os.environ.get("UNHEALTHY_SHA") == sha

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"ok {sha}".encode()
        self.send_response(503 if unhealthy and self.path == "/health" else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

port = int(sys.argv[sys.argv.index("--port") + 1])
http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""
RUN = [PY, "server.py", "--port", "$PORT"]
# `expand` fills $STATE_DIR from the node's env before anything runs.
RECORD = 'echo {} >> "$STATE_DIR/order"'


@pytest.fixture(scope="module")
def releases(tmp_path_factory):
    """v1 and v2 of the app: {sha: (archive, checksum)}, and the SHAs in order."""
    repo = GitRepo(tmp_path_factory.mktemp("app"))
    v1 = repo.commit({"server.py": SERVER, "version.txt": "1\n"}, message="v1")
    v2 = repo.commit({"version.txt": "2\n"}, message="v2")
    folder = tmp_path_factory.mktemp("archives")
    return {sha: make_archive(repo.path, sha, folder) for sha in (v1, v2)}, v1, v2


class Node:
    """A node: its base folder, app port, a state folder for the tests' drain scripts."""

    def __init__(self, root, name, *, off_cycle=False, transport=LocalTransport, env=None):
        self.name, self.root, self.off_cycle = name, Path(root) / name, off_cycle
        self.base, self.state = self.root / "node", self.root / "state"
        self.state.mkdir(parents=True)
        self.port = free_port()
        self.make_transport = transport
        self.extra_env = env or {}

    @property
    def env(self):
        return {"PATH": os.environ["PATH"], "LANG": "C.UTF-8", "HOST": "127.0.0.1",
                "PORT": str(self.port), "STATE_DIR": str(self.state), **self.extra_env}

    def target(self):
        return RolloutTarget(key=f"pk-{self.name}", name=self.name, transport=self.make_transport,
                             base=str(self.base), host="127.0.0.1", port=self.port, env=self.env,
                             off_cycle=self.off_cycle)

    def current(self):
        link = self.base / "current"
        return os.readlink(link).rpartition("/")[2] if link.is_symlink() else None

    def app_pid(self):
        pid_file = self.base / "shared" / "trainyard" / "app.pid"
        return int(pid_file.read_text()) if pid_file.exists() else None

    def release_folders(self):
        folder = self.base / "releases"
        return sorted(p.name for p in folder.iterdir()) if folder.exists() else []

    def get(self, path="/"):
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"http://127.0.0.1:{self.port}{path}", timeout=5) as response:
            return response.read().decode()

    def order(self):
        path = self.state / "order"
        return path.read_text().split() if path.exists() else []


@pytest.fixture
def make_nodes(tmp_path):
    made = []

    def make(*names, **kwargs):
        nodes = [Node(tmp_path, name, **kwargs) for name in names]
        made.extend(nodes)
        return nodes

    yield make
    for node in made:
        with node.make_transport() as transport:
            stop_app(transport, str(node.base), stop_timeout=1)


def steps(**overrides):
    return DeploySteps(**{"run": RUN, "health": "http://{host}:{port}/health",
                          "health_expect": "ok {sha}", "health_timeout": 20, **overrides})


class Recorder:
    """The callbacks, with the thread each ran in."""

    def __init__(self):
        self.calls, self.lines, self.threads = [], [], set()

    def kwargs(self):
        return {"log": self.log, "on_node_start": self.start, "on_node_done": self.done}

    def log(self, line):
        self.threads.add(threading.get_ident())
        self.lines.append(line)

    def start(self, target):
        self.threads.add(threading.get_ident())
        self.calls.append(("start", target.name))

    def done(self, target, outcome):
        self.threads.add(threading.get_ident())
        self.calls.append(("done", target.name, outcome.ok, outcome.rolled_back))

    def started(self):
        return [name for kind, name, *_ in self.calls if kind == "start"]


def deploy(nodes, releases, sha, step_config, **kwargs):
    archives = releases[0]
    archive, checksum = archives[sha]
    return rollout([n.target() for n in nodes], sha, archive, checksum, step_config, **kwargs)


def test_it_deploys_off_cycle_nodes_first_then_the_rest_in_batches_in_order(make_nodes, releases):
    _, v1, _ = releases
    a, b, c, d, e = make_nodes("a", "b", "c", "d", "e")
    c.off_cycle = e.off_cycle = True
    seen = Recorder()
    result = deploy([a, b, c, d, e], releases, v1, steps(), batch_size=2, **seen.kwargs())
    assert result.ok, result.message
    assert result.batches == [["c", "e"], ["a", "b"], ["d"]]
    assert result.message == f"deployed {v1[:10]} to 5 nodes in 3 batches"
    # Within a batch the nodes run in parallel; a batch starts when the one before is done.
    events = [(kind, name) for kind, name, *_ in seen.calls]
    assert {n for k, n in events[:4] if k == "start"} == {"c", "e"}
    assert {n for k, n in events[:4] if k == "done"} == {"c", "e"}
    assert {n for k, n in events[4:8] if k == "start"} == {"a", "b"}
    assert events[8:] == [("start", "d"), ("done", "d")]
    assert seen.threads == {threading.get_ident()}  # every callback in the caller's thread
    for node in (a, b, c, d, e):
        assert node.current() == v1 and node.get() == f"ok {v1}"
    outcome = {o.name: o for o in result.outcomes}["c"]
    assert outcome.ok and outcome.switched and outcome.previous_sha is None
    assert outcome.key == "pk-c" and "is live" in outcome.log
    assert any(line.startswith("c: ") for line in seen.lines)


def test_it_plans_one_off_cycle_batch_however_many_there_are(make_nodes):
    nodes = make_nodes("x", "y", "z", "w")
    for node in nodes[:3]:
        node.off_cycle = True
    plan = plan_batches([n.target() for n in nodes], 2)
    assert [[t.name for t in batch] for batch in plan] == [["x", "y", "z"], ["w"]]


def test_it_waits_for_drain_check_before_it_touches_the_node(make_nodes, releases):
    _, v1, v2 = releases
    (node,) = make_nodes("solo")
    assert deploy([node], releases, v1, steps()).ok
    pid_before = node.app_pid()
    seen = {}

    def release_the_drain():
        # Two checks seen: the rollout is polling drain_check, not moving on.
        wait_until(lambda: node.order().count("check") >= 2, timeout=20,
                   message="drain_check to be polled twice")
        seen["current"], seen["pid"] = node.current(), node.app_pid()
        with open(node.state / "order", "a") as order:
            order.write("drained\n")
        (node.state / "drained").touch()

    helper = threading.Thread(target=release_the_drain)
    helper.start()
    config = steps(drain=["sh", "-c", RECORD.format("drain")],
                   drain_check=["sh", "-c", RECORD.format("check") + ' && test -f "$STATE_DIR/drained"'],
                   install=["sh", "-c", RECORD.format("install")])
    result = deploy([node], releases, v2, config)
    helper.join()
    assert result.ok, result.message
    assert seen == {"current": v1, "pid": pid_before}  # still the old release, undisturbed
    order = node.order()
    assert order[0] == "drain" and order[-3:] == ["drained", "check", "install"]
    assert node.get() == f"ok {v2}"
    assert "drained: drain_check exited 0" in result.outcomes[0].log


def test_it_goes_on_when_drain_timeout_passes(make_nodes, releases):
    _, v1, v2 = releases
    (node,) = make_nodes("slow")
    assert deploy([node], releases, v1, steps()).ok
    config = steps(drain=["sh", "-c", RECORD.format("drain")],
                   drain_check=["sh", "-c", RECORD.format("check") + "; exit 1"], drain_timeout=0.3)
    result = deploy([node], releases, v2, config)
    assert result.ok, result.message
    assert node.order()[0] == "drain" and node.order().count("check") >= 2
    assert "drain_timeout (0.3s) passed before drain_check exited 0: deploying anyway" in \
        result.outcomes[0].log
    assert node.current() == v2 and node.get() == f"ok {v2}"


def test_it_does_not_drain_a_node_without_a_release(make_nodes, releases):
    _, v1, _ = releases
    (node,) = make_nodes("fresh")
    result = deploy([node], releases, v1, steps(drain=["sh", "-c", RECORD.format("drain")],
                                                  drain_check=["false"]))
    assert result.ok, result.message
    assert node.order() == []
    assert "nothing to drain" in result.outcomes[0].log


def test_it_stops_when_drain_fails_and_leaves_that_node_and_the_rest_as_they_were(make_nodes,
                                                                                 releases):
    _, v1, v2 = releases
    first, second = make_nodes("first", "second")
    assert deploy([first, second], releases, v1, steps()).ok
    pids = [first.app_pid(), second.app_pid()]
    seen = Recorder()
    result = deploy([first, second], releases, v2, steps(drain=["sh", "-c", "exit 4"]),
                    batch_size=1, **seen.kwargs())
    assert not result.ok
    assert result.message == "first failed to drain: `sh -c 'exit 4'` exited 4; second untouched"
    (outcome,) = result.outcomes
    assert outcome.failed_step == "drain" and not outcome.switched
    assert seen.started() == ["first"]
    assert [first.current(), second.current()] == [v1, v1]
    assert [first.app_pid(), second.app_pid()] == pids
    assert first.release_folders() == second.release_folders() == [v1]


def test_it_rolls_back_every_touched_node_when_batch_2_fails_its_health_check(make_nodes, releases):
    _, v1, v2 = releases
    fresh = make_nodes("a", off_cycle=True)[0]  # had no release before this rollout
    b, c, d = make_nodes("b", "c", "d")
    (e,) = make_nodes("e", env={"UNHEALTHY_SHA": v2})
    f, g = make_nodes("f", "g")
    assert deploy([b, c, d, e, f, g], releases, v1, steps(), batch_size=2).ok
    before = {n.name: (n.current(), n.app_pid(), n.release_folders()) for n in (f, g)}
    seen = Recorder()

    result = deploy([fresh, b, c, d, e, f, g], releases, v2, steps(health_timeout=5),
                    batch_size=2, **seen.kwargs())

    assert not result.ok
    assert result.batches == [["a"], ["b", "c"], ["d", "e"], ["f", "g"]]
    outcomes = {o.name: o for o in result.outcomes}
    assert re.fullmatch(
        re.escape(f"e failed its health check: http://127.0.0.1:{e.port}/health: HTTP 503 (after ")
        + r"\d+" + re.escape(f" attempt(s) in 5s) (it is back on {v1[:10]}); rolled back a, b, c, d; "
                             "a had no previous release: app stopped, `current` removed; f, g "
                             "untouched"), result.message), result.message
    outcomes = {o.name: o for o in result.outcomes}
    assert set(outcomes) == {"a", "b", "c", "d", "e"}
    assert not outcomes["e"].ok and outcomes["e"].failed_step == "health"
    for node in (b, c, d, e):  # back on v1 and serving it
        assert outcomes[node.name].rolled_back and outcomes[node.name].previous_sha == v1
        assert node.current() == v1 and node.get() == f"ok {v1}"
    assert fresh.current() is None and outcomes["a"].rolled_back
    wait_until(lambda: port_closed(fresh.port), timeout=10, message="a's app to stop")
    for node in (f, g):  # never got a command
        assert (node.current(), node.app_pid(), node.release_folders()) == before[node.name]
        assert process_alive(node.app_pid()) and node.get() == f"ok {v1}"
    assert set(seen.started()) == {"a", "b", "c", "d", "e"}
    # The rolled-back nodes are reported twice: after their deploy, after their rollback.
    assert ("done", "b", True, False) in seen.calls and ("done", "b", True, True) in seen.calls


def test_it_rolls_back_what_it_switched_when_cancelled_between_batches(make_nodes, releases):
    _, v1, v2 = releases
    first, second = make_nodes("first", "second")
    assert deploy([first, second], releases, v1, steps()).ok
    second_pid = second.app_pid()
    cancel = threading.Event()
    result = deploy([first, second], releases, v2, steps(), batch_size=1, cancel=cancel,
                    on_node_done=lambda target, outcome: cancel.set())  # a cancel after batch 1
    assert not result.ok
    assert result.message == "the rollout was cancelled; rolled back first; second untouched"
    assert first.current() == v1 and first.get() == f"ok {v1}"
    assert second.current() == v1 and second.app_pid() == second_pid


@pytest.mark.ssh
def test_it_rolls_out_over_ssh_off_cycle_node_first(ssh_nodes, tmp_path, releases):
    _, v1, v2 = releases
    nodes = []
    for index, sshd in enumerate(ssh_nodes):
        def transport(sshd=sshd):
            return SSHTransport(**sshd.transport_kwargs())
        nodes.append(Node(tmp_path, f"prod-{index + 1}", off_cycle=index == 2, transport=transport))
    config = steps(drain=["touch", "$STATE_DIR/drain-ran"],
                   drain_check=["test", "-f", "$STATE_DIR/drain-ran"])
    try:
        assert deploy(nodes, releases, v1, config, batch_size=2).ok
        assert not any((n.state / "drain-ran").exists() for n in nodes)  # nothing to drain yet
        seen = Recorder()
        result = deploy(nodes, releases, v2, config, batch_size=2, **seen.kwargs())
        assert result.ok, result.message
        assert result.batches == [["prod-3"], ["prod-1", "prod-2"]]
        assert seen.started()[0] == "prod-3"
        for node in nodes:
            assert (node.state / "drain-ran").exists()
            assert node.current() == v2 and node.get() == f"ok {v2}"
        assert {o.previous_sha for o in result.outcomes} == {v1}
    finally:
        for node in nodes:
            with node.make_transport() as transport:
                stop_app(transport, str(node.base), stop_timeout=1)
