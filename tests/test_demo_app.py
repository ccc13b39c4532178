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

from nodes.deploy import DeploySteps, deploy_release, expand, make_archive, stop_app
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
                       "feature/hello": "Alice <alice@example.com>",
                       "feature/bye": "Bob <bob@example.com>",
                       "feature/broken": "Bo Breaker <bo@example.com>"}
    # Each feature branch is one commit on master, as a fresh branch would be.
    for branch in ("feature/hello", "feature/bye", "feature/broken"):
        assert git(demo_repo, "rev-list", "--count", f"master..{branch}") == "1"
        assert git(demo_repo, "merge-base", "master", branch) == git(demo_repo, "rev-parse", "master")
    assert git(demo_repo, "worktree", "list", "--porcelain").count("worktree ") == 1


def test_it_merges_feature_hello_and_feature_bye_together_and_stays_green(demo_repo, tmp_path):
    """The demo's two-author train carries both: they must merge without a conflict, and
    master with both must pass every check."""
    changed = {branch: set(git(demo_repo, "diff", "--name-only", f"master...{branch}").split())
               for branch in ("feature/hello", "feature/bye")}
    assert not changed["feature/hello"] & changed["feature/bye"], changed
    checkout = tmp_path / "master"
    git(demo_repo, "clone", "--quiet", "--branch", "master", str(demo_repo), str(checkout))
    for branch in ("feature/hello", "feature/bye"):
        git(checkout, "-c", "user.name=Dana Demo", "-c", "user.email=dana@example.com", "merge",
            "--no-ff", "--quiet", "-m", f"Merge {branch}", f"origin/{branch}")
    assert (checkout / "tests" / "unit" / "test_farewell.py").exists()
    assert (checkout / "tests" / "unit" / "test_bye.py").exists()
    for suite in ("unit", "integration"):
        result = run_suite(checkout, suite)
        assert result.returncode == 0, output(result)
        assert "passed" in result.stdout
    lint = run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], checkout)
    assert lint.returncode == 0, output(lint)


def test_it_adds_feature_bye_to_a_demo_repository_made_before_it(tmp_path):
    """var/demo-repo from an older Trainyard: no feature/bye, and master may have moved on.
    The branch is added from where the others started; nothing else changes."""
    repo = create_demo_repository(tmp_path / "demo")
    original_fork = git(repo, "rev-parse", "master")
    git(repo, "branch", "-D", "feature/bye")
    git(repo, "-c", "user.name=Dana Demo", "-c", "user.email=dana@example.com", "merge",
        "--no-ff", "--quiet", "-m", "Merge feature/hello", "feature/hello")
    (repo / "NOTES.md").write_text("a person's work in progress\n")
    before = git(repo, "show-ref")

    assert create_demo_repository(repo) == repo

    assert git(repo, "show-ref", "--heads", "feature/bye")
    kept = [line for line in git(repo, "show-ref").splitlines() if "feature/bye" not in line]
    assert kept == before.splitlines()
    assert git(repo, "rev-parse", "feature/bye~1") == original_fork
    assert git(repo, "log", "-1", "--format=%an <%ae>", "feature/bye") == "Bob <bob@example.com>"
    assert git(repo, "symbolic-ref", "HEAD") == "refs/heads/master"
    assert git(repo, "status", "--porcelain") == "?? NOTES.md"
    assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 1
    # It still merges into the master that moved on.
    git(repo, "-c", "user.name=Dana Demo", "-c", "user.email=dana@example.com", "merge",
        "--no-ff", "--quiet", "-m", "Merge feature/bye", "feature/bye")


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
    # What the train reads, as Trainyard's own parser reads it.
    parsed = parse_spec(git(demo_repo, "show", "master:trainyard.yml"), SpecLimits())
    assert parsed.acceptance.argv == [".venv/bin/python", "-m", "pytest", "tests/acceptance", "-q"]
    assert parsed.environments == ["staging", "preview", "preprod"]
    assert parsed.train_schedule == "0 * * * *"
    steps = DeploySteps.from_spec(parsed.deploy)
    assert (steps.drain, steps.drain_check, steps.drain_timeout) == (
        ["bin/drain"], ["bin/drain-check"], 30)
    for script in ("bin/drain", "bin/drain-check"):
        assert git(demo_repo, "ls-files", "-s", script).startswith("100755"), script


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


class LocalNode:
    """The demo deployed by its own spec's `deploy:` to a local node in a temp folder, as
    Trainyard deploys it: the environment a node's steps get, `run` keeping it up."""

    def __init__(self, repo, folder):
        self.repo, self.folder = repo, folder
        self.spec = parse_spec(git(repo, "show", "master:trainyard.yml"), SpecLimits())
        self.steps = DeploySteps.from_spec(self.spec.deploy)
        self.port, self.base = free_port(), folder / "node"
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = demo_env(HOST="127.0.0.1", PORT=str(self.port),
                            APP_STATE_DIR=str(self.base / "shared" / "state"))
        self.transport, self.pids = LocalTransport(), []

    def deploy(self, branch):
        sha = git(self.repo, "rev-parse", branch)
        archive, checksum = make_archive(self.repo, sha, self.folder / "archives")
        result = deploy_release(self.transport, self.base, sha, archive, checksum, self.steps,
                                env=self.env, host="127.0.0.1", port=self.port)
        assert result.ok, result.message
        self.pids.append(int((self.base / "shared" / "trainyard" / "app.pid").read_text()))
        assert result.live.startswith(f"live: pid {self.pids[-1]}, started by Trainyard for {sha}")
        return sha

    def run_step(self, argv):
        """A spec command in the live release, as the production rollout runs drain steps."""
        lines = []
        result = self.transport.run(expand(argv, self.env), cwd=self.base / "current",
                                    env=self.env, timeout=30, on_output=lines.append)
        return result.exit_code, "".join(lines)

    def stop(self):
        stop_app(self.transport, self.base, stop_timeout=1)
        kill_leftovers(self.pids)


@pytest.fixture
def node(demo_repo, tmp_path):
    node = LocalNode(demo_repo, tmp_path)
    yield node
    node.stop()


def acceptance(checkout, url, sha):
    """The spec's acceptance suite as a train runs it: TARGET_URL and the SHA it deployed."""
    return run([sys.executable, "-m", "pytest", "tests/acceptance", "-q", "-p", "no:cacheprovider"],
               checkout, demo_env(TARGET_URL=url, TRAINYARD_SHA=sha))


def test_trainyard_runs_restarts_and_stops_the_demo_with_its_own_spec(node):
    """The demo's `deploy:` as Trainyard runs it on a local node: `run` keeps the server
    up, a new release replaces it, health proves the SHA, `drain` makes health 503."""
    first = node.deploy("master")
    assert get(f"{node.url}/version") == (200, first)
    second = node.deploy("feature/hello")
    assert not alive(node.pids[0]) and alive(node.pids[1])
    assert get(f"{node.url}/health") == (200, f'{{"status": "ok", "sha": "{second}"}}')

    drained = run([str(node.base / "current" / "bin" / "drain")], node.base / "current", node.env)
    assert drained.returncode == 0, output(drained)
    assert get(f"{node.url}/health")[0] == 503

    node.deploy("feature/hello")  # the same SHA again: restarted, and taking traffic again
    assert not alive(node.pids[1]) and get(f"{node.url}/health")[0] == 200
    stop_app(node.transport, node.base)
    assert not alive(node.pids[2]) and get(f"{node.url}/health") == (None, "")


def test_the_acceptance_suite_passes_on_the_release_under_test_only(node, demo_repo, tmp_path):
    checkout = tmp_path / "checkout"
    git(demo_repo, "clone", "--quiet", str(demo_repo), str(checkout))
    master = node.deploy("master")
    passed = acceptance(checkout, node.url, master)
    assert passed.returncode == 0, output(passed)
    assert "4 passed" in passed.stdout
    # The node serves another release than the train deployed: the old one still answering.
    stale = acceptance(checkout, node.url, git(demo_repo, "rev-parse", "feature/hello"))
    assert stale.returncode == 1, output(stale)
    assert f"serving {master}, not the release" in stale.stdout
    # The right release, but it no longer greets as users expect.
    broken = node.deploy("feature/broken")
    failed = acceptance(checkout, node.url, broken)
    assert failed.returncode == 1, output(failed)
    assert "Hello, world!" in failed.stdout and "Hello, Ada!" in failed.stdout


def test_the_spec_drains_the_running_demo_and_checks_it_is_drained(node):
    node.deploy("master")
    code, said = node.run_step(node.steps.drain_check)
    assert code == 1 and "not draining yet" in said, said
    code, said = node.run_step(node.steps.drain)
    assert code == 0, said
    status, body = get(f"{node.url}/health")
    assert status == 503 and '"in_flight": 0' in body, body
    with socket.create_connection(("127.0.0.1", node.port), timeout=5) as client:
        # A request the server has taken and not answered yet: the drain is not done.
        client.sendall(b"GET /hello?name=Ada HTTP/1.0\r\n")
        code, said = node.run_step(node.steps.drain_check)
        assert code == 1 and "1 request(s) still in flight" in said, said
        client.sendall(b"\r\n")
        assert b"Hello, Ada!" in client.makefile("rb").read()
    code, said = node.run_step(node.steps.drain_check)
    assert code == 0 and "drained" in said, said
    # The next release takes traffic again; with its app stopped there is nothing to drain.
    node.deploy("feature/hello")
    assert get(f"{node.url}/health")[0] == 200
    stop_app(node.transport, node.base)
    code, said = node.run_step(node.steps.drain_check)
    assert code == 0 and "nothing to drain" in said, said
