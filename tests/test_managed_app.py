"""Managed app processes (`deploy.run`) and honest liveness, through LocalTransport and
through SSHTransport to a real sshd on loopback.

The app is a real HTTP server (stdlib) in a real git repository; nodes are folders on
this machine, so the tests read pid files, /proc and the app's answers directly. A
release is live only with proof that the *new* release answers: these tests put an old
process, a stray one or an escaped one on the port and check that the deploy says so.
"""

import os
import signal
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from nodes.deploy import UNPROVEN, DeploySteps, deploy_release, make_archive, rollback, stop_app
from nodes.transports import LocalTransport
from nodes.transports.ssh import SSHTransport
from tests.helpers import GitRepo, free_port, port_closed, wait_until
from tests.sshd import process_alive

PY = sys.executable
# The app: answers every GET with "ok <its REVISION>"; binding a held port raises
# "Address already in use", as a real server does.
SERVER = """\
import http.server, pathlib, signal, sys
sha = pathlib.Path("REVISION").read_text().strip()
if pathlib.Path("ignore-term").exists():
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"ok {sha}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

port = int(sys.argv[sys.argv.index("--port") + 1])
server = http.server.HTTPServer(("127.0.0.1", port), Handler)
print("serving", sha, "on", port, flush=True)
server.serve_forever()
"""
CRASH = "import sys\nprint('boom: DATABASE_URL is not set', flush=True)\nsys.exit(3)\n"
# A self-managed start that detaches properly: Popen returns once the child has its own
# session, so nothing is left in start's process group. It records what it started.
START_DETACHED = """\
import os, subprocess, sys
state = os.environ["APP_STATE_DIR"]
with open(os.path.join(state, "server.log"), "ab") as log:
    server = subprocess.Popen([sys.executable, "server.py", "--port", os.environ["PORT"]],
                              stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                              start_new_session=True)
with open(os.path.join(state, "started.pids"), "a") as pids:
    pids.write(f"{server.pid}\\n")
"""
STOP_NOTHING = "echo 'stop: nothing to do'\n"
RUN = [PY, "server.py", "--port", "$PORT"]  # $PORT: filled from what Trainyard passes
# A `run` command whose server escapes into a session of its own.
ESCAPING_RUN = ["sh", "-c", f'setsid {PY} server.py --port "$PORT" < /dev/null & '
                            'echo $! >> "$APP_STATE_DIR/started.pids"; exec sleep 600']


@dataclass
class App:
    repo: GitRepo
    v1: str
    v2: str
    stubborn: str  # ignores SIGTERM
    crash: str  # exits at once


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    repo = GitRepo(tmp_path_factory.mktemp("app"))
    files = {"server.py": SERVER, "bin/start.py": START_DETACHED, "bin/stop.sh": STOP_NOTHING}
    v1 = repo.commit({**files, "version.txt": "1\n"}, message="v1")
    v2 = repo.commit({"version.txt": "2\n"}, message="v2")
    stubborn = repo.commit({"ignore-term": "yes\n"}, message="stubborn")
    crash = repo.commit({"server.py": CRASH}, message="crash")
    return App(repo, v1, v2, stubborn, crash)


class Node:
    """A node (its base folder, app port) and what the tests started beside it."""

    def __init__(self, transport, root):
        self.transport, self.root = transport, root
        self.base, self.state = root / "node", root / "state"
        self.port = free_port()
        self.archives = {}
        self.strays = []

    @property
    def env(self):
        # What nodes.services.deploys.step_environment gives a node, in short.
        return {"PATH": os.environ["PATH"], "LANG": "C.UTF-8", "HOST": "127.0.0.1",
                "PORT": str(self.port), "APP_STATE_DIR": str(self.state)}

    def deploy(self, app, sha, steps, lines=None):
        if sha not in self.archives:
            self.archives[sha] = make_archive(app.repo.path, sha, self.root / "archives")
        archive, checksum = self.archives[sha]
        self.state.mkdir(exist_ok=True)
        return deploy_release(self.transport, self.base, sha, archive, checksum, steps,
                              env=self.env, log=lines.append if lines is not None else None,
                              host="127.0.0.1", port=self.port)

    def get(self, path="/health"):
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
                f"http://127.0.0.1:{self.port}{path}", timeout=5) as response:
            return response.read().decode()

    def app_pid(self):
        pid_file = self.base / "shared" / "trainyard" / "app.pid"
        return int(pid_file.read_text()) if pid_file.exists() else None

    def current(self):
        link = self.base / "current"
        return os.readlink(link) if link.is_symlink() else None

    def stray(self, *argv):
        """A process that is not Trainyard's, listening on the app port."""
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        self.strays.append(proc.pid)
        wait_until(lambda: not port_closed(self.port), timeout=15, message="the stray to listen")
        return proc.pid

    def started_by_the_app(self):
        """Pids the app's own start scripts recorded (processes Trainyard does not manage)."""
        recorded = self.state / "started.pids"
        return [int(p) for p in recorded.read_text().split()] if recorded.exists() else []

    def clean_up(self):
        try:
            stop_app(self.transport, self.base, stop_timeout=1)
        finally:
            for pid in self.strays + self.started_by_the_app():
                try:
                    os.killpg(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass


def session_of(pid):
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[3])


@pytest.fixture(params=["local", pytest.param("ssh", marks=pytest.mark.ssh)])
def node(request, tmp_path):
    if request.param == "local":
        transport = LocalTransport()
    else:
        transport = SSHTransport(**request.getfixturevalue("ssh_nodes")[0].transport_kwargs())
    made = Node(transport, tmp_path)
    try:
        yield made
    finally:
        made.clean_up()
        transport.close()


def run_steps(**overrides):
    values = {"run": RUN, "health": "http://{host}:{port}/health", "health_timeout": 20,
              **overrides}
    return DeploySteps(**values)


def start_steps(**overrides):
    values = {"start": [PY, "bin/start.py"], "health": "http://{host}:{port}/health",
              "health_timeout": 5, **overrides}
    return DeploySteps(**values)


# A managed process -----------------------------------------------------------------------

def test_it_keeps_a_run_app_running_after_the_command_that_started_it(node, app):
    lines = []
    result = node.deploy(app, app.v1, run_steps(), lines)
    assert result.ok, result.message
    pid = node.app_pid()
    assert session_of(pid) == pid  # the leader of a session of its own
    assert result.live == (f"live: pid {pid}, started by Trainyard for {app.v1}, holds port "
                           f"{node.port} and answered health")
    assert result.live in lines
    assert [s.name for s in result.steps] == ["inspect", "port", "prepare", "upload", "verify",
                                              "unpack", "switch", "stop", "start", "health",
                                              "cleanup"]
    node.transport.close()  # the SSH session (or the local command) is long gone
    assert node.get() == f"ok {app.v1}"
    assert process_alive(pid)
    log = (node.base / "shared" / "trainyard" / "app.log").read_text()
    assert f"serving {app.v1} on {node.port}" in log


def test_it_stops_the_old_release_before_the_new_one_starts(node, app):
    assert node.deploy(app, app.v1, run_steps()).ok
    first = node.app_pid()
    lines = []
    result = node.deploy(app, app.v2, run_steps(), lines)
    assert result.ok, result.message
    assert f"stopped pid {first} with TERM" in lines
    assert not process_alive(first)
    assert node.get() == f"ok {app.v2}" and node.app_pid() != first


def test_it_restarts_the_release_that_is_already_current(node, app):
    assert node.deploy(app, app.v1, run_steps()).ok
    first = node.app_pid()
    result = node.deploy(app, app.v1, run_steps())
    assert result.ok and "already current" in result.message
    assert [s.name for s in result.steps] == ["inspect", "stop", "start", "health"]
    assert not process_alive(first) and process_alive(node.app_pid())
    assert node.get() == f"ok {app.v1}"


def test_it_kills_an_app_that_ignores_term_after_stop_timeout(node, app):
    assert node.deploy(app, app.stubborn, run_steps()).ok
    stubborn = node.app_pid()
    lines = []
    result = node.deploy(app, app.v2, run_steps(stop_timeout=1), lines)
    assert result.ok, result.message
    assert f"pid {stubborn} did not stop within 1s of TERM (stop_timeout): killed" in lines
    assert not process_alive(stubborn)
    assert node.get() == f"ok {app.v2}"


def test_it_rolls_a_run_app_back_to_the_previous_release(node, app):
    assert node.deploy(app, app.v1, run_steps()).ok
    assert node.deploy(app, app.v2, run_steps()).ok
    second = node.app_pid()
    back = rollback(node.transport, node.base, steps=run_steps(), env=node.env, host="127.0.0.1",
                    port=node.port)
    assert back.ok, back.message
    assert back.live.startswith(f"live: pid {node.app_pid()}, started by Trainyard for {app.v1}")
    assert not process_alive(second) and node.get() == f"ok {app.v1}"


def test_it_expands_port_and_host_in_run_and_shows_what_ran(node, app):
    lines = []
    assert node.deploy(app, app.v1, run_steps(run=[PY, "server.py", "--port", "${PORT}"]), lines).ok
    assert any(line.startswith("started pid ") and f"server.py --port {node.port}`" in line
               for line in lines)
    assert f"port {node.port} is free" in lines


def test_it_fails_at_once_when_the_app_exits_and_shows_its_log(node, app):
    assert node.deploy(app, app.v1, run_steps()).ok
    result = node.deploy(app, app.crash, run_steps(health_timeout=60))
    assert not result.ok and result.rolled_back
    assert "exited before it answered" in result.message
    assert "boom: DATABASE_URL is not set" in result.message
    assert "shared/trainyard/app.log" in result.message
    health = next(s for s in result.steps if s.name == "health" and not s.ok)
    assert health.duration < 30  # it did not wait out the health timeout
    assert f"rolled back to {app.v1} and restarted it" in result.message
    assert node.get() == f"ok {app.v1}"


def test_it_reports_a_run_command_that_cannot_start(node, app):
    result = node.deploy(app, app.v1, run_steps(run=["no-such-server", "--port", "$PORT"]))
    assert not result.ok
    # setsid may fail to exec before or after the new session exists: the start step or the
    # health wait sees the exit, and either names the command and what went wrong.
    assert "`no-such-server --port" in result.message
    assert "exited at once" in result.message or "exited before it answered" in result.message
    assert "failed to execute no-such-server" in result.message


# Honest liveness -------------------------------------------------------------------------

@pytest.mark.parametrize("new", ["start", "start+expect", "run"])
def test_it_fails_when_the_previous_release_still_answers(node, app, new):
    """The false green: the old release's process keeps the port and answers health, the
    new release's server dies with "Address already in use"."""
    assert node.deploy(app, app.v1, start_steps()).ok  # a start that never stops the old one
    (old,) = node.started_by_the_app()
    steps = {"start": start_steps(), "start+expect": start_steps(health_expect="{sha}"),
             "run": run_steps()}[new]
    result = node.deploy(app, app.v2, steps)
    assert not result.ok, result.live
    holder = f"pid {old} ({PY} server.py --port {node.port})"
    if new == "start":
        assert (f"port {node.port} is still held by {holder}, which held it before `start` ran: "
                "the old process answers, not the new release") in result.message
    elif new == "start+expect":
        assert f"the body does not hold '{app.v2}': 'ok {app.v1}'" in result.message
    else:
        assert (f"port {node.port} is held by {holder}, not by this app: stop it or give the node "
                "another app_port") in result.message
        assert "failed before the switch, `current` is unchanged" in result.message
    assert node.current() == f"releases/{app.v1}"
    assert node.get() == f"ok {app.v1}"
    if new != "run":  # the new release's server did start, and could not bind
        wait_until(lambda: "Address already in use" in (node.state / "server.log").read_text(),
                   timeout=15, message="the new server to fail")


def test_it_names_a_stray_process_holding_the_port(node, app):
    """The held port: something that is not Trainyard's (an app left by an earlier run)."""
    assert node.deploy(app, app.v1, run_steps()).ok
    v1 = node.app_pid()
    os.kill(v1, signal.SIGKILL)  # v1 dies; something else takes its port
    wait_until(lambda: not process_alive(v1) and port_closed(node.port), message="v1 to die")
    stray = node.stray(PY, "-m", "http.server", str(node.port), "--bind", "127.0.0.1")
    result = node.deploy(app, app.v2, run_steps())
    assert not result.ok
    assert (f"port {node.port} is held by pid {stray} ({PY} -m http.server {node.port} --bind "
            "127.0.0.1), not by this app: stop it or give the node another app_port") in result.message
    assert f"`current` is unchanged ({app.v1})" in result.message
    assert node.current() == f"releases/{app.v1}" and process_alive(stray)


def test_it_names_the_holder_when_a_start_app_fails(node, app):
    """The same held port under `start`: the failure names the port and its holder."""
    stray = node.stray(PY, "-m", "http.server", str(node.port), "--bind", "127.0.0.1")
    failing = ["sh", "-c", "echo 'cannot bind'; exit 1"]
    result = node.deploy(app, app.v1, start_steps(start=failing))
    assert not result.ok
    assert "exited 1" in result.message
    assert f"(port {node.port} is held by pid {stray} ({PY} -m http.server" in result.message


def test_it_fails_when_the_answer_comes_from_outside_the_apps_session(node, app):
    result = node.deploy(app, app.v1, run_steps(run=ESCAPING_RUN))
    assert not result.ok
    (escaped,) = node.started_by_the_app()
    assert (f"health answered, but port {node.port} is held by pid {escaped} ({PY} server.py "
            f"--port {node.port}), not by the app Trainyard started (pid ") in result.message


def test_it_says_that_start_must_detach(node, app):
    """A `start` that leaves the server in its own process group: it dies with the command."""
    attached = ["sh", "-c", f'{PY} server.py --port "$PORT" &']
    result = node.deploy(app, app.v1, start_steps(start=attached, health_timeout=2))
    assert not result.ok
    assert (f"nothing listens on port {node.port} on the node: `start` must leave the app running "
            "on its own and exit 0 once it is launched: the app in a session of its own (setsid) "
            "before `start` exits") in result.message
    assert "Or use `deploy.run:` and Trainyard keeps the app running" in result.message


def test_it_says_when_nothing_proves_the_new_release_answers(node, app):
    lines = []
    result = node.deploy(app, app.v1, start_steps(), lines)
    assert result.ok and result.live == UNPROVEN
    assert UNPROVEN == ("live: health answered, but nothing proves it is the new release: add "
                        "`expect` to health")
    assert UNPROVEN in lines


def test_it_proves_a_start_app_by_the_sha_in_its_answer(node, app):
    result = node.deploy(app, app.v1, start_steps(health_expect="{sha}"))
    assert result.ok and result.live == f"live: health answered with {app.v1}"


def test_it_stops_a_start_app_with_stop_in_the_old_release_and_checks_the_port(node, app):
    steps = start_steps(stop=["sh", "bin/stop.sh"])
    assert node.deploy(app, app.v1, steps).ok
    (old,) = node.started_by_the_app()
    lines = []
    result = node.deploy(app, app.v2, steps, lines)
    assert f"$ sh bin/stop.sh    (in {node.base}/releases/{app.v1})" in lines
    assert "stop: nothing to do" in lines
    assert not result.ok
    assert (f"port {node.port} is still held by pid {old} ({PY} server.py --port {node.port}) "
            "after `stop` ran: `stop` must end the app") in result.message


# Recorded by the deploy service ----------------------------------------------------------

def test_the_deployment_record_keeps_the_liveness_line(db, app, tmp_path, settings):
    from nodes.models import Deployment
    from nodes.models import Node as NodeRow
    from nodes.services.deploys import deploy_build
    from tests.factories import BuildFactory, CommitFactory, RepositoryFactory

    settings.TRAINYARD = {**settings.TRAINYARD, "WORKSPACE_DIR": str(tmp_path / "work")}
    repository = RepositoryFactory(clone_url=str(app.repo.path))
    build = BuildFactory(commit=CommitFactory(repository=repository, sha=app.v1), branch="master")
    row = NodeRow.objects.create(name="local-1", transport=NodeRow.Transport.LOCAL,
                                 host="127.0.0.1", app_port=free_port(),
                                 base_path=str(tmp_path / "node"))
    spec = {"run": {"argv": RUN}, "health": {"url": "http://{host}:{port}/", "expect": "{sha}"}}
    lines = []
    try:
        deployment = deploy_build(build, row, spec, log=lines.append)
    finally:
        stop_app(LocalTransport(), row.base_path, stop_timeout=1)
    deployment.refresh_from_db()
    assert deployment.status == Deployment.Status.SUCCEEDED, deployment.message
    assert deployment.message.startswith(f"{app.v1} is live. live: pid ")
    assert f"holds port {row.app_port} and answered health with '{app.v1}'" in deployment.message
    assert f"server.py --port {row.app_port}`" in "".join(lines)  # $PORT from the node


def _probe(state, port, path):
    from nodes.deploy.app import APP_SCRIPT

    return subprocess.run(["sh", "-c", APP_SCRIPT, "sh", "probe", str(state), str(port)],
                          env={"PATH": path}, capture_output=True, text=True,
                          check=True).stdout.splitlines()


def test_the_port_probe_sees_the_same_with_ss_and_with_proc_alone(tmp_path):
    """ss is used where the node has it; a node without it reads /proc/net/tcp: both name
    the process listening on the port (v4 and v6), and both see it free once it is gone."""
    import shutil

    tools = tmp_path / "no-ss"
    tools.mkdir()
    for tool in ("sh", "awk", "cat", "ls", "tr", "readlink", "tail", "wc", "printf"):
        if shutil.which(tool):
            (tools / tool).symlink_to(shutil.which(tool))
    full = os.environ["PATH"]
    assert shutil.which("ss", path=full), "the test needs ss (iproute2) for its first half"
    port = free_port()
    listener = subprocess.Popen([PY, "-c", (
        "import socket, time\n"
        f"a = socket.socket(); a.bind(('127.0.0.1', {port})); a.listen()\n"
        f"b = socket.socket(socket.AF_INET6); b.bind(('::1', {port})); b.listen()\n"
        "print('up', flush=True); time.sleep(600)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert listener.stdout.readline() == "up\n"
        with_ss, without = _probe(tmp_path, port, full), _probe(tmp_path, port, str(tools))
        assert with_ss == without
        assert with_ss[0] == "app gone " and with_ss[1] == "port held"
        assert with_ss[2].startswith(f"holder {listener.pid} ")
        assert len(with_ss) == 3  # one holder, named once for its two sockets
    finally:
        listener.kill()
        listener.wait()
    wait_until(lambda: port_closed(port), message="the listener to go")
    assert _probe(tmp_path, port, full)[1:] == _probe(tmp_path, port, str(tools))[1:] == ["port free"]
