"""The deploy protocol (nodes/deploy/), the same through LocalTransport and SSHTransport.

Nodes are folders on this machine (the SSH ones behind real sshd on loopback), so the
tests check the outcome by reading the node's filesystem directly.
"""

import http.server
import os
import sys
import tarfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from nodes.deploy import (
    KEEP_RELEASES,
    DeployError,
    DeploySteps,
    current_release,
    deploy_release,
    make_archive,
    rollback,
)
from nodes.transports import LocalTransport
from nodes.transports.ssh import SSHTransport
from tests.helpers import GitRepo, free_port

START = """\
import os, pathlib, sys
state = pathlib.Path(os.environ["APP_STATE_DIR"])
state.mkdir(parents=True, exist_ok=True)
revision = pathlib.Path("REVISION").read_text().strip()
(state / "started").write_text(revision)
with open(state / "starts.log", "a") as log:
    log.write(revision + "\\n")
print("started", revision)
"""
FAILING_START = "import sys\nprint('boom: cannot bind the port')\nsys.exit(3)\n"
INSTALL = [sys.executable, "-c", "import pathlib; pathlib.Path('installed').write_text('yes')"]
START_ARGV = [sys.executable, "bin/start.py"]


# An application repository -------------------------------------------------------------------

@dataclass
class App:
    repo: GitRepo
    good: list  # SHAs whose start works, oldest first
    bad_start: str  # a SHA whose start exits 3


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    repo = GitRepo(tmp_path_factory.mktemp("app"))
    good = [repo.commit({"app.txt": f"version {n}\n", "bin/start.py": START}, message=f"v{n}")
            for n in range(KEEP_RELEASES + 2)]
    bad = repo.commit({"bin/start.py": FAILING_START}, message="broken start")
    return App(repo=repo, good=good, bad_start=bad)


@pytest.fixture
def archives(app, tmp_path):
    """sha -> (archive path, checksum), built on demand."""
    built = {}

    def get(sha):
        if sha not in built:
            built[sha] = make_archive(app.repo.path, sha, tmp_path / "archives")
        return built[sha]

    return get


# Nodes -------------------------------------------------------------------------------------

class HealthServer:
    """The app's /health, served from the test: 200 unless the started SHA is unhealthy;
    the body is the started SHA (health `expect`s it: this process holds the port for
    every release, so nothing else could prove which release answers)."""

    def __init__(self, state_dir):
        self.state_dir = state_dir
        self.unhealthy = set()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                started = outer.state_dir / "started"
                sha = started.read_text() if started.exists() else ""
                ok = self.path == "/health" and sha and sha not in outer.unhealthy
                self.send_response(200 if ok else 500)
                self.end_headers()
                self.wfile.write(sha.encode())

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Target:
    transport: object
    base: Path
    state: Path
    health: HealthServer

    @property
    def env(self):
        # The whole environment for LocalTransport; added to the login one over SSH.
        return {"PATH": os.environ["PATH"], "APP_STATE_DIR": str(self.state), "LANG": "C.UTF-8"}

    def steps(self, **overrides):
        values = {"install": INSTALL, "start": START_ARGV, "health": "http://{host}:{port}/health",
                  "health_expect": "{sha}", "health_timeout": 5, **overrides}
        return DeploySteps(**values)

    def current(self):
        link = self.base / "current"
        return os.readlink(link) if link.is_symlink() else None

    def releases(self):
        return sorted(p.name for p in (self.base / "releases").iterdir() if p.is_dir())

    def starts(self):
        log = self.state / "starts.log"
        return log.read_text().split() if log.exists() else []


def make_transport(request, kind):
    if kind == "local":
        return LocalTransport()
    return SSHTransport(**request.getfixturevalue("ssh_nodes")[0].transport_kwargs())


@pytest.fixture(params=["local", pytest.param("ssh", marks=pytest.mark.ssh)])
def target(request, tmp_path):
    health = HealthServer(tmp_path / "state")
    with make_transport(request, request.param) as transport:
        yield Target(transport, tmp_path / "node", tmp_path / "state", health)
    health.close()


def deploy(target, archives, sha, *, steps=None, lines=None, checksum=None, log=None, cancel=None):
    archive, built_checksum = archives(sha)
    return deploy_release(target.transport, target.base, sha, archive, checksum or built_checksum,
                          steps or target.steps(), env=target.env,
                          log=log or (lines.append if lines is not None else None),
                          host="127.0.0.1", port=target.health.port, cancel=cancel)


# The archive ----------------------------------------------------------------------------------

def test_it_builds_an_archive_with_a_revision_file(app, tmp_path):
    sha = app.good[0]
    path, checksum = make_archive(app.repo.path, sha, tmp_path / "a")
    with tarfile.open(path) as tar:
        assert tar.extractfile("REVISION").read().decode() == f"{sha}\n"
        assert tar.extractfile("app.txt").read().decode() == "version 0\n"
    again, same = make_archive(app.repo.path, sha, tmp_path / "b")
    assert same == checksum and again.read_bytes() == path.read_bytes()


@pytest.mark.parametrize("sha", ["abc", "A" * 40, "0" * 39, "0" * 40 + "\n", "--output=/tmp/x" + "0" * 25,
                                 None])
def test_it_refuses_anything_but_a_full_sha(app, tmp_path, sha):
    with pytest.raises(DeployError, match="40 lowercase hex"):
        make_archive(app.repo.path, sha, tmp_path)
    with pytest.raises(DeployError, match="40 lowercase hex"):
        deploy_release(LocalTransport(), tmp_path, sha, tmp_path / "x", "0" * 64, DeploySteps())


def test_it_reports_a_sha_missing_from_the_repository(app, tmp_path):
    with pytest.raises(DeployError, match="git archive"):
        make_archive(app.repo.path, "0" * 40, tmp_path)


# Deploying ------------------------------------------------------------------------------------

def test_it_deploys_a_release(target, app, archives):
    sha = app.good[0]
    lines = []
    result = deploy(target, archives, sha, lines=lines)
    assert result.ok, result.message
    assert result.sha == sha and result.previous_sha is None
    assert target.current() == f"releases/{sha}"
    release = target.base / "releases" / sha
    assert (release / "REVISION").read_text() == f"{sha}\n"
    assert (release / "installed").read_text() == "yes"
    assert not list((target.base / "releases").glob("*.tar.gz*"))  # the archive is gone
    assert (target.base / "shared").is_dir()
    assert target.starts() == [sha]
    assert [s.name for s in result.steps] == ["inspect", "prepare", "upload", "verify", "unpack",
                                              "install", "switch", "start", "health", "cleanup"]
    assert all(s.ok and s.duration >= 0 for s in result.steps)
    assert f"started {sha}" in lines and any(line.startswith("$ tar -xzf") for line in lines)
    assert current_release(target.transport, target.base) == sha
    if isinstance(target.transport, SSHTransport):
        assert target.transport.connections == 1  # every command and the upload: one connection


def test_it_logs_the_inspect_and_verify_steps_as_they_ran(target, app, archives):
    """Each `$` line is a command that ran as shown; what it printed is labelled."""
    first, second = app.good[:2]
    assert deploy(target, archives, first).ok
    lines = []
    result = deploy(target, archives, second, lines=lines)
    assert result.ok, result.message
    base = target.base
    inspect = lines[lines.index("--> inspect") + 1:lines.index("--> prepare")]
    assert inspect[0].startswith("$ sh -c 'releases=$1; shift;")
    assert inspect[0].endswith(f"' sh {base}/releases {base}/current {base}/previous")
    assert inspect[1:] == [f"current -> releases/{first}", "previous: no link",
                           f"releases on the node, newest first: {first}"]
    verify = lines[lines.index("--> verify") + 1:lines.index("--> unpack")]
    _, checksum = archives(second)
    assert verify[0].startswith("$ sh -c '<sha256sum $1, then mv $1 $3 if the digest is $2>' sh ")
    assert verify[1:] == [f"sha256 on the node: {checksum}",
                          f"as expected: renamed to {base}/releases/{second}.tar.gz"]
    assert not [line for line in lines if line.startswith(("$ readlink", "$ ls", "$ sha256sum"))]


def test_it_rolls_back_to_the_previous_release(target, app, archives):
    first, second = app.good[:2]
    assert deploy(target, archives, first).ok
    result = deploy(target, archives, second)
    assert result.ok and result.previous_sha == first
    assert target.current() == f"releases/{second}"

    back = rollback(target.transport, target.base, steps=target.steps(), env=target.env,
                    port=target.health.port)
    assert back.ok, back.message
    assert back.sha == first and back.previous_sha == second
    assert target.current() == f"releases/{first}"
    assert target.starts() == [first, second, first]
    # A second rollback undoes the first.
    assert rollback(target.transport, target.base, steps=target.steps(), env=target.env,
                    port=target.health.port).sha == second


def test_it_refuses_to_roll_back_without_a_previous_release(target, app, archives):
    assert rollback(target.transport, target.base, steps=target.steps()).message == (
        "rollback failed: inspect failed: there is no previous release to roll back to")
    assert deploy(target, archives, app.good[0]).ok
    result = rollback(target.transport, target.base, steps=target.steps())
    assert not result.ok and target.current() == f"releases/{app.good[0]}"


def test_it_keeps_five_releases_and_never_the_live_ones(target, app, archives):
    shas = app.good  # seven releases
    for sha in shas[:6]:
        assert deploy(target, archives, sha).ok
    assert target.releases() == sorted(shas[1:6])
    # Back to an old release, then forward: the old one is now `previous` and stays.
    assert rollback(target.transport, target.base, to_sha=shas[1], steps=target.steps(),
                    env=target.env, port=target.health.port).ok
    assert deploy(target, archives, shas[6]).ok
    assert target.current() == f"releases/{shas[6]}"
    assert target.releases() == sorted(shas[1:7])  # five newest + the protected previous


def test_it_refuses_an_archive_whose_checksum_does_not_match(target, app, archives):
    first, second = app.good[:2]
    assert deploy(target, archives, first).ok
    result = deploy(target, archives, second, checksum="0" * 64)
    assert not result.ok
    assert "checksum mismatch" in result.message and "`current` is unchanged" in result.message
    assert target.current() == f"releases/{first}"
    assert target.releases() == [first]  # the unverified upload was discarded
    assert target.starts() == [first]


def test_it_rolls_back_when_start_fails(target, app, archives):
    first = app.good[0]
    assert deploy(target, archives, first).ok
    lines = []
    result = deploy(target, archives, app.bad_start, lines=lines)
    assert not result.ok and result.rolled_back
    assert "start failed" in result.message and "exited 3" in result.message
    assert f"rolled back to {first} and restarted it" in result.message
    assert "boom: cannot bind the port" in lines
    assert target.current() == f"releases/{first}"
    assert target.starts() == [first, first]
    assert not (target.base / "previous").exists()  # as before the failed deploy


def test_it_rolls_back_when_the_health_check_fails(target, app, archives):
    first, second = app.good[:2]
    assert deploy(target, archives, first).ok
    target.health.unhealthy.add(second)
    result = deploy(target, archives, second, steps=target.steps(health_timeout=1))
    assert not result.ok and result.rolled_back
    assert "health failed" in result.message and "HTTP 500" in result.message
    assert target.current() == f"releases/{first}"
    assert target.starts() == [first, second, first]


def test_it_still_rolls_back_when_the_deploy_is_cancelled(target, app, archives):
    first, second = app.good[:2]
    assert deploy(target, archives, first).ok
    cancel = threading.Event()

    def log(line):
        if line == "--> start":
            cancel.set()

    result = deploy(target, archives, second, log=log, cancel=cancel)
    assert not result.ok and result.rolled_back
    assert "start failed" in result.message and "cancelled" in result.message
    assert target.current() == f"releases/{first}"
    assert target.starts() == [first, first]


def test_it_removes_current_when_the_first_release_fails_to_start(target, app, archives):
    result = deploy(target, archives, app.bad_start)
    assert not result.ok and not result.rolled_back
    assert "no previous release, `current` removed" in result.message
    assert target.current() is None
    assert current_release(target.transport, target.base) is None


def test_it_leaves_current_alone_when_install_fails(target, app, archives):
    first, second = app.good[:2]
    assert deploy(target, archives, first).ok
    failing = target.steps(install=[sys.executable, "-c", "raise SystemExit('no deps')"])
    result = deploy(target, archives, second, steps=failing)
    assert not result.ok and "install failed" in result.message
    assert target.current() == f"releases/{first}" and target.releases() == [first]


def test_it_ticks_during_a_long_step(target, app, archives):
    """The caller's chance to flush its log and heartbeat while install runs quietly."""
    ticks = []
    slow = target.steps(install=[sys.executable, "-c", "import time; time.sleep(0.6)"])
    archive, checksum = archives(app.good[0])
    result = deploy_release(target.transport, target.base, app.good[0], archive, checksum, slow,
                            env=target.env, port=target.health.port,
                            on_tick=lambda: ticks.append(time.monotonic()))
    assert result.ok
    install = next(s for s in result.steps if s.name == "install")
    assert install.duration >= 0.6 and len(ticks) >= 4


def test_it_only_restarts_the_release_that_is_already_current(target, app, archives):
    sha = app.good[0]
    assert deploy(target, archives, sha).ok
    result = deploy(target, archives, sha)
    assert result.ok and "already current" in result.message
    assert [s.name for s in result.steps] == ["inspect", "start", "health"]
    assert target.starts() == [sha, sha]


# A node dying in the middle -------------------------------------------------------------------

@pytest.mark.ssh
def test_it_leaves_current_when_the_node_dies_mid_deploy(sshd_factory, app, archives, tmp_path):
    node = sshd_factory()
    health = HealthServer(tmp_path / "state")
    target = Target(SSHTransport(**node.transport_kwargs()), tmp_path / "node", tmp_path / "state",
                    health)
    first, second = app.good[:2]
    assert deploy(target, archives, first).ok
    killer = threading.Thread(target=node.stop)

    def log(line):
        lines.append(line)
        if line == "installing" and not killer.is_alive():
            killer.start()

    lines = []
    slow = target.steps(install=[sys.executable, "-u", "-c",
                                 "import time; print('installing'); time.sleep(60)"])
    archive, checksum = archives(second)
    result = deploy_release(target.transport, target.base, second, archive, checksum, slow,
                            env=target.env, log=log, port=health.port)
    killer.join(10)
    health.close()
    assert not result.ok
    assert f"install failed: lost the connection to 127.0.0.1:{node.port}" in result.message
    assert f"`current` is unchanged ({first})" in result.message
    assert target.current() == f"releases/{first}"
    assert (target.base / "releases" / first / "REVISION").read_text() == f"{first}\n"
