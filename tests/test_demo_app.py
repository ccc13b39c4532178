"""The demo app Trainyard deploys: its own suites, its git repository, and its deploy
section run by Trainyard's deploy protocol.

No database needed: everything runs in subprocesses and temporary folders.
"""

import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from nodes.deploy import DeploySteps, deploy_release, make_archive, stop_app
from nodes.transports import LocalTransport
from pipeline.demo import DEMO_APP_DIR, DEMO_BRANCHES, create_demo_repository
from pipeline.spec import SpecLimits, parse_spec

SUITES = ("unit", "integration", "smoke", "acceptance")
# Requests to the app under test must not go through a proxy set in the environment.
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
# Inherited values would change what the demo app's suites and scripts do.
SCRUBBED = ("DJANGO_SETTINGS_MODULE", "PYTEST_ADDOPTS", "TARGET_URL", "APP_SHA",
            "APP_STATE_DIR", "PID_FILE", "PORT", "HOST")


def demo_env(**extra):
    env = {key: value for key, value in os.environ.items() if key not in SCRUBBED}
    # As in Trainyard: the venv's bin first on PATH, so the spec's `python3` is ours.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(extra)
    return env


def run(command, cwd, env=None):
    return subprocess.run(command, cwd=cwd, env=env or demo_env(), capture_output=True,
                          text=True, timeout=120)


def run_suite(cwd, suite):
    return run([sys.executable, "-m", "pytest", f"tests/{suite}", "-q", "-p", "no:cacheprovider"],
               cwd)


def output(result):
    return f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"


def git(repo, *args):
    result = subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                            text=True)
    return result.stdout.strip()


def get(url):
    try:
        with DIRECT.open(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read().decode()
    except OSError:
        return None, ""


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def alive(pid):
    # Zombies (exited, not yet reaped by init) count as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def kill_leftovers(pids):
    for pid in pids:
        if alive(pid) and b"demo_app.server" in Path(f"/proc/{pid}/cmdline").read_bytes():
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def demo_repo(tmp_path_factory):
    return create_demo_repository(tmp_path_factory.mktemp("repos") / "demo")


@pytest.mark.parametrize("suite", SUITES)
def test_it_passes_the_demo_app_suite(suite):
    result = run_suite(DEMO_APP_DIR, suite)
    assert result.returncode == 0, output(result)


def test_it_lints_the_demo_app():
    result = run([sys.executable, "-m", "ruff", "check", "."], DEMO_APP_DIR)
    assert result.returncode == 0, output(result)


def test_it_creates_the_demo_branches(demo_repo):
    branches = git(demo_repo, "for-each-ref", "--format=%(refname:short)", "refs/heads/")
    assert set(branches.split()) == set(DEMO_BRANCHES)
    assert git(demo_repo, "symbolic-ref", "HEAD") == "refs/heads/master"
    assert git(demo_repo, "status", "--porcelain") == ""
    assert git(demo_repo, "rev-parse", "--is-bare-repository") == "false"
    authors = {branch: git(demo_repo, "log", "-1", "--format=%an <%ae>", branch)
               for branch in DEMO_BRANCHES}
    assert authors == {"master": "Dana Demo <dana@example.com>",
                       "feature/hello": "Ari Author <ari@example.com>",
                       "feature/broken": "Bo Breaker <bo@example.com>"}


def test_it_leaves_build_artefacts_out_of_the_repository(demo_repo):
    files = git(demo_repo, "ls-files").split()
    assert "trainyard.yml" in files and "bin/drain" in files
    assert not [f for f in files if "__pycache__" in f or f.startswith(("reports/", "run/"))]
    assert git(demo_repo, "ls-files", "-s", "bin/drain").startswith("100755")


def test_it_keeps_an_existing_demo_repository(demo_repo):
    before = git(demo_repo, "show-ref")
    assert create_demo_repository(demo_repo) == demo_repo
    assert git(demo_repo, "show-ref") == before


def test_it_refuses_to_overwrite_another_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("not a repository")
    with pytest.raises(FileExistsError):
        create_demo_repository(tmp_path)


def test_it_has_a_trainyard_spec_on_master(demo_repo):
    spec = yaml.safe_load(git(demo_repo, "show", "master:trainyard.yml"))
    assert {"lint", "unit", "integration"} <= set(spec["checks"])
    assert spec["deploy"]["run"] == "python3 -m demo_app.server"
    assert spec["deploy"]["health"] == {"url": "http://{host}:{port}/health", "expect": "{sha}"}
    assert spec["environments"] == ["staging", "preview", "preprod"]


@pytest.mark.parametrize(("branch", "unit_passes"),
                         [("feature/hello", True), ("feature/broken", False)])
def test_it_makes_feature_branches_pass_or_fail(demo_repo, tmp_path, branch, unit_passes):
    checkout = tmp_path / "checkout"
    git(demo_repo, "clone", "--quiet", "--branch", branch, str(demo_repo), str(checkout))
    unit = run_suite(checkout, "unit")
    assert (unit.returncode == 0) is unit_passes, output(unit)
    # Lint stays green on both: feature/broken must fail on its tests only.
    lint = run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], checkout)
    assert lint.returncode == 0, output(lint)


def test_trainyard_runs_restarts_and_stops_the_demo_with_its_own_spec(demo_repo, tmp_path):
    """The demo's `deploy:` as Trainyard runs it on a local node: `run` keeps the server
    up, a new release replaces it, health proves the SHA, `drain` makes health 503."""
    spec = parse_spec(git(demo_repo, "show", "master:trainyard.yml"), SpecLimits())
    steps = DeploySteps.from_spec(spec.deploy)
    port, base, state = free_port(), tmp_path / "node", tmp_path / "node" / "shared" / "state"
    env = demo_env(HOST="127.0.0.1", PORT=str(port), APP_STATE_DIR=str(state))
    transport, pids = LocalTransport(), []

    def deploy(branch):
        sha = git(demo_repo, "rev-parse", branch)
        archive, checksum = make_archive(demo_repo, sha, tmp_path / "archives")
        result = deploy_release(transport, base, sha, archive, checksum, steps, env=env,
                                host="127.0.0.1", port=port)
        assert result.ok, result.message
        pids.append(int((base / "shared" / "trainyard" / "app.pid").read_text()))
        assert result.live.startswith(f"live: pid {pids[-1]}, started by Trainyard for {sha}")
        return sha

    try:
        first = deploy("master")
        assert get(f"http://127.0.0.1:{port}/version") == (200, first)
        second = deploy("feature/hello")
        assert not alive(pids[0]) and alive(pids[1])
        assert get(f"http://127.0.0.1:{port}/health") == (200, f'{{"status": "ok", "sha": "{second}"}}')

        drained = run([str(base / "current" / "bin" / "drain")], base / "current", env)
        assert drained.returncode == 0, output(drained)
        assert get(f"http://127.0.0.1:{port}/health")[0] == 503

        deploy("feature/hello")  # the same SHA again: restarted, and taking traffic again
        assert not alive(pids[1]) and get(f"http://127.0.0.1:{port}/health")[0] == 200
        stop_app(transport, base)
        assert not alive(pids[2]) and get(f"http://127.0.0.1:{port}/health") == (None, "")
    finally:
        stop_app(transport, base, stop_timeout=1)
        kill_leftovers(pids)
