"""The command line as a user runs it: `manage.py bb|pr|repo|node|token` in its own
process, against a live server, reading what it prints and how it exits."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.models import ApiToken, PullRequest

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


# Registration ---------------------------------------------------------------------------

OPERATOR_PERMS = ["pipeline.add_repository", "pipeline.delete_repository", "nodes.view_node",
                  "nodes.add_node", "nodes.change_node", "nodes.delete_node",
                  "pipeline.add_build", "pipeline.add_pullrequest", "pipeline.change_pullrequest"]


@pytest.fixture
def ops_token(db):
    from tests.factories import UserFactory

    return ApiToken.issue(UserFactory(username="ops", perms=OPERATOR_PERMS), "cli")[1]


def test_it_adds_lists_and_removes_repositories(live_server, git_repo, ops_token, tmp_path):
    run = {"server": live_server.url, "token": ops_token}
    added = cli("repo", "add", "shop", str(git_repo.path), **run)
    assert added.returncode == 0, added.stderr
    assert added.stdout.strip() == f"added repository shop ({git_repo.path}, default branch master)"
    twice = cli("repo", "add", "shop", str(git_repo.path), **run)
    assert (twice.returncode, twice.stderr.strip()) == (1, "a repository named 'shop' exists already")
    unreadable = cli("repo", "add", "other", str(tmp_path / "nothing"), **run)
    assert unreadable.returncode == 1 and unreadable.stderr.startswith("git cannot read")
    listed = cli("repo", "list", **run)
    assert listed.stdout.splitlines() == [
        "NAME  DEFAULT BRANCH  RESERVED NODES  CLONE URL",
        f"shop  master          -               {git_repo.path}"]
    unasked = cli("repo", "remove", "shop", stdin="", **run)  # no terminal, no --yes
    assert unasked.returncode == 2 and "pass --yes" in unasked.stderr
    missing = cli("repo", "remove", "nosuchrepo", "--yes", **run)
    assert (missing.returncode, missing.stderr.strip()) == (
        1, "no repository named 'nosuchrepo'; known: shop")
    removed = cli("repo", "remove", "shop", "--yes", **run)
    assert (removed.returncode, removed.stdout.strip()) == (0, "removed repository shop")
    usage = cli("repo", "add", "only-a-name", **run)
    assert usage.returncode == 2 and "the following arguments are required: clone_url" in usage.stderr


def test_it_adds_lists_and_changes_nodes(live_server, repository, ops_token, tmp_path):
    run = {"server": live_server.url, "token": ops_token}
    base = tmp_path / "nodes" / "app-1"
    added = cli("node", "add", "app-1", "--transport", "local", "--app-port", "9931",
                "--base-path", str(base), "--repository", "app", **run)
    assert added.returncode == 0, added.stderr
    assert added.stdout.splitlines() == [
        f"added node app-1 (local, reserved for app): {base}, app at http://127.0.0.1:9931/",
        "health: healthy (reachable via local)"]
    clash = cli("node", "add", "app-2", "--transport", "local", "--app-port", "9932",
                "--base-path", str(base), **run)
    assert clash.returncode == 1 and "overlaps node app-1's" in clash.stderr
    unknown = cli("node", "add", "app-2", "--transport", "local", "--app-port", "9932",
                  "--base-path", str(tmp_path / "app-2"), "--repository", "nosuchrepo", **run)
    assert unknown.stderr.strip() == "no repository named 'nosuchrepo'; known: app"
    assert cli("node", "drain", "app-1", **run).stdout.strip() == "app-1: draining"
    assert cli("node", "disable", "app-1", **run).stdout.strip() == "app-1: disabled"
    listed = cli("node", "list", **run).stdout.splitlines()
    assert listed[0].split() == ["NAME", "POOL", "ENV", "ADDRESS", "APP", "STATE", "HEALTH",
                                 "BRANCH", "SHA", "HEALTH", "MESSAGE"]
    assert listed[1].split() == ["app-1", "app", "only", "branch", "local", "127.0.0.1:9931",
                                 "disabled,draining", "healthy", "-", "-", "reachable", "via", "local"]
    enabled = cli("node", "enable", "app-1", **run)
    assert enabled.stdout.splitlines() == ["app-1: enabled", "health: healthy (reachable via local)"]
    again = cli("node", "enable", "app-1", **run)
    assert again.stdout.splitlines()[0] == "app-1 was enabled already"
    missing = cli("node", "drain", "nope", **run)
    assert (missing.returncode, missing.stderr.strip()) == (1, "no node named 'nope'; known: app-1")
    assert cli("node", "remove", "app-1", "--yes", **run).stdout.strip() == "removed node app-1"


def test_a_viewer_is_refused_with_the_reason(live_server, repository, viewer, tmp_path):
    token = ApiToken.issue(viewer, "cli")[1]
    refused = cli("node", "add", "n", "--transport", "local", "--app-port", "9941",
                  "--base-path", str(tmp_path / "n"), server=live_server.url, token=token)
    assert (refused.returncode, refused.stderr.strip()) == (1, "viewer may not add_node")
    forged = cli("repo", "list", server=live_server.url, token="ty_forged")
    assert (forged.returncode, forged.stderr.strip()) == (
        1, "invalid API token (check --token, TRAINYARD_TOKEN or var/api-token)")


def test_it_creates_a_token_shown_once(developer, tmp_path, settings, client, repository):
    import io

    from django.core.management import call_command
    from django.core.management.base import CommandError

    settings.VAR_DIR = tmp_path
    out = io.StringIO()
    call_command("token", "create", "dev", "--name", "laptop", "--save", stdout=out)
    key = out.getvalue().split("API token 'laptop' for dev: ")[1].split()[0]
    assert ApiToken.objects.get(name="laptop").key_hash == ApiToken.hash(key)
    assert not ApiToken.objects.filter(key_hash=key).exists()
    saved = tmp_path / "api-token"
    assert saved.read_text().strip() == key and oct(saved.stat().st_mode & 0o777) == "0o600"
    assert client.get("/api/nodes", HTTP_AUTHORIZATION=f"Bearer {key}").status_code == 403  # a dev
    with pytest.raises(CommandError, match="no user named 'nobody'; known: dev") as refused:
        call_command("token", "create", "nobody")
    assert refused.value.returncode == 1


# Host keys ------------------------------------------------------------------------------

def on_a_terminal(*args, server, token, answer):
    """`manage.py ARGS` with a pseudo-terminal for stdin and stdout: answers the y/N
    question with `answer` once it is asked. Returns (exit code, everything printed)."""
    import pty
    import select
    import time

    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINYARD_")}
    env["TRAINYARD_TOKEN"] = token
    main, terminal = pty.openpty()
    proc = subprocess.Popen([sys.executable, "manage.py", *args, "--server", server], cwd=ROOT,
                            env=env, stdin=terminal, stdout=terminal, stderr=terminal)
    os.close(terminal)
    output, answered, deadline = b"", False, time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            if not select.select([main], [], [], deadline - time.monotonic())[0]:
                break
            try:
                chunk = os.read(main, 4096)
            except OSError:  # EIO: the command ended and closed the terminal
                break
            if not chunk:
                break
            output += chunk
            if not answered and b"[y/N]" in output:
                os.write(main, answer + b"\n")
                answered = True
        return proc.wait(30), output.decode("utf-8", "replace").replace("\r\n", "\n")
    finally:
        os.close(main)
        if proc.poll() is None:
            proc.kill()


@pytest.fixture
def ssh_node_added(ssh_nodes, client_key, settings):
    """An SSH node registered with no pinned key, and the sshd behind it."""
    from nodes.services.pool import add_node

    settings.TRAINYARD = {**settings.TRAINYARD, "SSH_KEY_FILE": str(client_key.path)}
    sshd = ssh_nodes[0]
    add_node(name="ssh-1", host=sshd.host, ssh_port=sshd.port, user="root", app_port=8080,
             base_path=str(sshd.base / "cli"))
    return sshd


@pytest.mark.ssh
def test_it_pins_a_host_key_only_on_a_matching_fingerprint(live_server, ops_token, ssh_node_added,
                                                           ssh_nodes):
    from nodes.models import Node
    from tests.sshd import keygen_fingerprint

    run = {"server": live_server.url, "token": ops_token}
    offered = keygen_fingerprint(ssh_node_added.host_key_pub)
    unattended = cli("node", "pin-host-key", "ssh-1", stdin="y\n", **run)  # a "y" nobody typed
    assert unattended.returncode == 2, unattended.stderr
    assert f"fingerprint:  {offered}" in unattended.stdout
    assert "not pinned: without a terminal nobody can compare" in unattended.stderr
    other = keygen_fingerprint(ssh_nodes[1].host_key_pub)
    wrong = cli("node", "pin-host-key", "ssh-1", "--fingerprint", other, **run)
    assert wrong.returncode == 1 and f"offers {offered}, not {other}" in wrong.stderr
    assert Node.objects.get(name="ssh-1").host_key == ""
    pinned = cli("node", "pin-host-key", "ssh-1", "--fingerprint", offered, **run)
    assert pinned.returncode == 0, pinned.stderr
    assert pinned.stdout.splitlines()[-2:] == [
        f"ssh-1: host key {offered} pinned; health healthy",
        "health: healthy (reachable via ssh)"]
    assert Node.objects.get(name="ssh-1").host_key == ssh_node_added.host_key


@pytest.mark.ssh
def test_it_asks_before_pinning_on_a_terminal(live_server, ops_token, ssh_node_added):
    from nodes.models import Node
    from tests.sshd import keygen_fingerprint

    offered = keygen_fingerprint(ssh_node_added.host_key_pub)
    code, output = on_a_terminal("node", "pin-host-key", "ssh-1", server=live_server.url,
                                 token=ops_token, answer=b"n")
    assert code == 1 and f"fingerprint:  {offered}" in output and "not pinned" in output
    assert Node.objects.get(name="ssh-1").host_key == ""
    code, output = on_a_terminal("node", "pin-host-key", "ssh-1", server=live_server.url,
                                 token=ops_token, answer=b"y")
    assert code == 0, output
    assert f"ssh-1: host key {offered} pinned; health healthy" in output
    assert Node.objects.get(name="ssh-1").host_key == ssh_node_added.host_key


# End to end: an application that is not the demo, without the admin ---------------------

APP_SPEC = """\
checks:
  unit: python3 -m unittest -q test_app
deploy:
  run: python3 app.py
  health: {url: "http://{host}:{port}/version", expect: "{sha}"}
smoke: python3 smoke.py
"""

APP = '''\
"""A tiny web app: /health, and /version answers the SHA it was deployed as."""
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def body_for(path):
    return {"/health": "ok", "/version": os.environ.get("TRAINYARD_SHA", "")}.get(path)


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = body_for(self.path)
        self.send_response(200 if body is not None else 404)
        self.end_headers()
        self.wfile.write((body or "not found").encode())


if __name__ == "__main__":
    ThreadingHTTPServer((os.environ["HOST"], int(os.environ["PORT"])), Handler).serve_forever()
'''

TEST_APP = '''\
import unittest

import app


class AppTest(unittest.TestCase):
    def test_it_answers_health(self):
        self.assertEqual(app.body_for("/health"), "ok")
'''

SMOKE = '''\
import os, sys, urllib.request

served = urllib.request.urlopen(os.environ["TARGET_URL"] + "version", timeout=5).read().decode()
sys.exit(0 if served == os.environ["TRAINYARD_SHA"] else f"serving {served}, not the build's SHA")
'''


def test_a_new_application_goes_from_registration_to_a_node_serving_its_sha(
        worker, live_server, ops_token, tmp_path):
    import urllib.request

    from nodes.deploy import stop_app
    from nodes.transports import LocalTransport
    from tests.helpers import GitRepo, free_port, port_closed, wait_until

    shop = GitRepo(tmp_path / "shop")
    shop.commit({"trainyard.yml": APP_SPEC, "app.py": APP, "test_app.py": TEST_APP,
                 "smoke.py": SMOKE}, message="A tiny shop")
    sha = shop.commit({"README": "checkout\n"}, branch="feature/checkout", message="Checkout")
    run = {"server": live_server.url, "token": ops_token}
    base, port = tmp_path / "nodes" / "shop-1", free_port()
    steps = [
        ("repo", "add", "shop", str(shop.path)),
        ("node", "add", "shop-1", "--transport", "local", "--app-port", str(port),
         "--base-path", str(base), "--repository", "shop"),
        ("pr", "open", "shop", "feature/checkout", "--title", "Checkout"),
    ]
    try:
        for step in steps:
            done = cli(*step, **run)
            assert done.returncode == 0, (step, done.stdout, done.stderr)
        built = cli("bb", "shop", "feature/checkout", "--wait", "--poll", "0.1", **run)
        assert built.returncode == 0, built.stdout + built.stderr
        assert built.stdout.strip().endswith(f"running at http://127.0.0.1:{port}/")
        served = urllib.request.urlopen(f"http://127.0.0.1:{port}/version", timeout=5).read()
        assert served.decode() == sha
        listed = cli("pr", "list", "shop", **run).stdout.splitlines()
        assert listed[1].split()[:4] == ["#1", "open", "feature/checkout", "good"]
        nodes = cli("node", "list", **run).stdout.splitlines()
        assert nodes[1].split()[:2] == ["shop-1", "shop"] and sha[:10] in nodes[1]
        assert "feature/checkout" in nodes[1]
    finally:
        stop_app(LocalTransport(), base, stop_timeout=1)
        wait_until(lambda: port_closed(port), timeout=20, message="the shop app to stop")


# LGTMs and merging ---------------------------------------------------------------------

def test_pr_lgtm_as_another_user_and_merge_by_branch(live_server, repository, git_repo, developer,
                                                    admin_user, token):
    from pipeline.models import Build, Lgtm
    from pipeline.services.builds import record_commit
    from pipeline.services.pulls import open_pull_request
    from tests.factories import UserFactory

    git_repo.commit({"hello.txt": "hi\n"}, branch="feature/hello")
    pr, _ = open_pull_request(repository, "feature/hello", user=developer)
    UserFactory(username="bob", perms=["pipeline.add_lgtm"])
    boss = ApiToken.issue(admin_user, "cli")[1]
    refused = cli("pr", "merge", "app", "feature/hello", server=live_server.url, token=token)
    assert refused.returncode == 1
    assert refused.stderr.strip() == ("cannot merge #1: not good to merge: the branch has not "
                                      "been built; needs 1 LGTM, has 0")
    mine = cli("pr", "lgtm", "app", "1", "--as", "bob", server=live_server.url, token=token)
    assert mine.returncode == 1
    assert mine.stderr.strip() == "dev may not lgtm"
    given = cli("pr", "lgtm", "app", "1", "--as", "bob", server=live_server.url, token=boss)
    assert given.returncode == 0, given.stderr
    assert given.stdout.strip() == ("#1 LGTM: bob; not good to merge: the branch has not been "
                                    "built")
    assert Lgtm.objects.get().user.username == "bob"
    Build.objects.create(repository=repository, commit=record_commit(repository, pr.head_sha),
                         sha=pr.head_sha, branch=pr.branch, status=Build.Status.PASSED)
    nothing = cli("pr", "merge", "app", "feature/nope", server=live_server.url, token=token)
    assert (nothing.returncode, nothing.stderr.strip()) == (
        1, "no open pull request for feature/nope in app")
    merged = cli("pr", "merge", "app", "feature/hello", server=live_server.url, token=token)
    assert merged.returncode == 0, merged.stderr
    master = Build.objects.get(kind=Build.Kind.MASTER)
    assert merged.stdout.strip() == (f"#1 merged as {git_repo.head()}; master build "
                                     f"#{master.pk} queued")
    assert PullRequest.objects.get().state == "merged"
