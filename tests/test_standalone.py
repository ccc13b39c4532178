"""The README's first command, end to end: `manage.py standalone` (what `make run` runs)
serves Trainyard with its in-process worker, and `manage.py bb` in another process
builds the demo branches against it."""

import os
import signal
import stat
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def standalone(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE", "TRAINYARD_ENV")}
    env["TRAINYARD_VAR_DIR"] = str(tmp_path / "var")
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
        yield url, env, tmp_path
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
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
    url, env, tmp = standalone
    hello = bb(url, env, "feature/hello")
    assert hello.returncode == 0, hello.stdout + hello.stderr
    assert "build #" in hello.stdout and "passed" in hello.stdout
    assert "unit" in hello.stdout and "lint" in hello.stdout and "integration" in hello.stdout
    broken = bb(url, env, "feature/broken")
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert "unit           failed" in broken.stdout
    hostile = bb(url, env, "; rm -rf /")
    assert hostile.returncode == 2 and "not a valid branch name" in hostile.stderr
    missing = bb(url, env, "feature/none")
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    # The server kept serving through all of that.
    assert urllib.request.urlopen(url + "/radiators/demo/", timeout=5).status == 200


def test_it_creates_the_admin_once_and_keeps_secrets_private(standalone):
    url, env, tmp = standalone
    var = tmp / "var"
    log = (tmp / "server.log").read_text()
    password = (var / "admin-credentials.txt").read_text().split("password: ")[1].strip()
    assert password in log
    for name in ("admin-credentials.txt", "api-token", "secret_key"):
        assert stat.S_IMODE((var / name).stat().st_mode) == 0o600, name
