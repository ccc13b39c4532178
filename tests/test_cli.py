"""The command line as a user runs it: `manage.py bb|pr|repo|node|token` in its own
process, against a live server, reading what it prints and how it exits."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.models import ApiToken, PullRequest
from tests.helpers import build_ended

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.django_db(transaction=True)


def cli(*args, server, token="", var_dir=None, stdin=None):
    """`manage.py ARGS --server SERVER` in a process of its own (a second terminal)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINYARD_")}
    if token:
        env["TRAINYARD_TOKEN"] = token
    if var_dir:
        env["TRAINYARD_VAR_DIR"] = str(var_dir)
    return subprocess.run([sys.executable, "manage.py", *args, "--server", server], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300, input=stdin)


@pytest.fixture
def token(developer):
    return ApiToken.issue(developer, "cli")[1]


# Findings ------------------------------------------------------------------------------

def test_it_names_what_exists_when_asked_for_what_does_not(live_server, repository, token):
    missing = cli("bb", "nosuchrepo", "master", server=live_server.url, token=token)
    assert missing.returncode == 2
    assert missing.stderr.strip() == "no repository named 'nosuchrepo'; known: app"
    closed = cli("pr", "close", "app", "99", server=live_server.url, token=token)
    assert closed.returncode == 1
    assert closed.stderr.strip() == "no pull request #99 in app; it has no open pull requests"


def test_it_says_how_to_get_a_token_when_there_is_none(live_server, repository, tmp_path):
    result = cli("bb", "app", "master", server=live_server.url, var_dir=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == ("no API token: run `manage.py token create USER --save`, "
                                     "set TRAINYARD_TOKEN or pass --token")


def test_pr_list_shows_open_pull_requests_unless_asked_for_all(live_server, repository, git_repo,
                                                              token):
    from pipeline.services.pulls import close_pull_request, open_pull_request

    for name in ("feature/kept", "feature/dropped"):
        git_repo.commit({f"{name}.txt": name}, branch=name)
        open_pull_request(repository, name, title=name)
    close_pull_request(PullRequest.objects.get(branch="feature/dropped"))
    listed = cli("pr", "list", "app", server=live_server.url, token=token)
    assert listed.returncode == 0, listed.stderr
    assert "feature/kept" in listed.stdout and "feature/dropped" not in listed.stdout
    everything = cli("pr", "list", "app", "--all", server=live_server.url, token=token)
    assert "feature/kept" in everything.stdout and "feature/dropped" in everything.stdout


HOSTILE = "\x1b]0;owned\x07\x1b[2J\u202e"


def test_it_escapes_terminal_controls_in_what_the_server_sends(worker, live_server, repository,
                                                             git_repo, token):
    from pipeline.services.pulls import open_pull_request

    junit = "reports/\\e[31mred\\e]0;owned\\a.xml"  # YAML escapes: ESC ... BEL
    git_repo.commit({"trainyard.yml": f'checks:\n  unit: {{run: python3 -c "pass", junit: "{junit}"}}\n'},
                    branch="feature/hostile")
    open_pull_request(repository, "feature/hostile", title=f"Fix {HOSTILE}it")
    listed = cli("pr", "list", "app", server=live_server.url, token=token)
    assert "Fix \\x1b]0;owned\\x07\\x1b[2J\\u202eit" in listed.stdout
    built = cli("bb", "app", "feature/hostile", "--wait", "--poll", "0.1", server=live_server.url,
                token=token)
    assert "no JUnit report at reports/\\x1b[31mred\\x1b]0;owned\\x07.xml" in built.stdout, built.stdout
    for output in (listed.stdout, built.stdout, built.stderr):
        assert not any(ch in output for ch in "\x1b\x07\u202e")
