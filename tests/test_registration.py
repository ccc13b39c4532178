"""Registering repositories and nodes without the admin: the services' rules (with real
git repositories, local nodes and real sshd nodes) and the API doors in front of them."""

import json
import re
import socket
import threading
import time

import pytest
from django.core import signing

from nodes.models import Node
from nodes.services import pool
from nodes.transports import TransportError
from pipeline.models import ApiToken, Build, Event, Repository
from pipeline.services import repositories
from tests.factories import BuildFactory, RepositoryFactory, UserFactory
from tests.sshd import keygen_fingerprint

pytestmark = pytest.mark.django_db

OPERATOR_PERMS = ["pipeline.add_repository", "pipeline.delete_repository", "nodes.view_node",
                  "nodes.add_node", "nodes.change_node", "nodes.delete_node"]


@pytest.fixture
def operator(db):
    """Runs the pool: may register and remove repositories and nodes."""
    return UserFactory(username="ops", perms=OPERATOR_PERMS)


def auth(user):
    return {"HTTP_AUTHORIZATION": f"Bearer {ApiToken.issue(user, 'test')[1]}"}


def post_json(client, url, body, **headers):
    return client.post(url, data=json.dumps(body), content_type="application/json", **headers)


def local_node(tmp_path, name="app-1", **fields):
    return pool.add_node(**{"name": name, "transport": "local", "app_port": 9901,
                            "base_path": str(tmp_path / "nodes" / name), **fields})


# Repositories: add ----------------------------------------------------------------------

def test_it_adds_a_repository_git_can_read(git_repo, operator):
    repository = repositories.add_repository("shop", str(git_repo.path), user=operator)
    assert (repository.name, repository.default_branch) == ("shop", "master")
    event = Event.objects.get(kind="repository.added")
    assert event.repository == repository and event.actor == operator


@pytest.mark.parametrize(("name", "url", "expected"), [
    ("no such", "/x", "not a usable repository name"),
    ("", "/x", "not a usable repository name"),
    ("-x", "/x", "not a usable repository name"),
    ("shop", "relative/path", "neither a URL nor an absolute path"),
    ("shop", "-uhello", "starts with '-'"),
    ("shop", "ext::sh -c touch% /tmp/pwned", "without spaces"),
    ("shop", "ext::sh", "'<transport>::' URLs are not allowed"),
    ("shop", "/nonexistent/repo", "git cannot read /nonexistent/repo"),
    ("shop", "", "a clone URL or an absolute path is needed"),
])
def test_it_refuses_names_and_urls_it_cannot_use(name, url, expected):
    with pytest.raises(repositories.RepositoryError, match=expected):
        repositories.add_repository(name, url)
    assert not Repository.objects.exists()


def test_it_refuses_a_default_branch_the_repository_does_not_have(git_repo):
    git_repo.commit({"x": "x"}, branch="develop")
    with pytest.raises(repositories.RepositoryError,
                       match=r"has no branch 'main'; its branches: develop, master"):
        repositories.add_repository("shop", str(git_repo.path), default_branch="main")


def test_it_refuses_a_name_that_exists(repository, git_repo):
    with pytest.raises(repositories.RepositoryError, match="a repository named 'app' exists already"):
        repositories.add_repository("app", str(git_repo.path))


def test_it_never_shows_the_credentials_of_a_url_it_cannot_read():
    with pytest.raises(repositories.RepositoryError) as refused:
        repositories.add_repository("shop", "https://x-access-token:s3cr3t@127.0.0.1:9/o/r.git")
    assert "s3cr3t" not in str(refused.value) and "***@" in str(refused.value)


def test_a_remote_that_never_answers_costs_the_request_timeout_only(settings):
    settings.TRAINYARD = {**settings.TRAINYARD, "GIT_REQUEST_TIMEOUT": 2}
    silent = socket.create_server(("127.0.0.1", 0))
    accepted = []
    threading.Thread(target=lambda: accepted.append(silent.accept()), daemon=True).start()
    started = time.monotonic()
    try:
        with pytest.raises(repositories.RepositoryError, match="timed out"):
            repositories.add_repository("shop", f"git://127.0.0.1:{silent.getsockname()[1]}/r.git")
    finally:
        silent.close()
    assert time.monotonic() - started < 10 and accepted


# Repositories: remove -------------------------------------------------------------------

def test_it_removes_a_repository_and_keeps_a_record(repository, operator, tmp_path):
    BuildFactory(repository=repository, commit__repository=repository, status="passed")
    assert repositories.remove_repository(repository, user=operator) == "app"
    assert not Repository.objects.exists() and not Build.objects.exists()
    assert Event.objects.get(kind="repository.removed").message == "app removed"


def test_it_refuses_to_remove_a_repository_nodes_are_reserved_for(repository, tmp_path):
    local_node(tmp_path, repository="app")
    with pytest.raises(repositories.RepositoryError, match="node.s. reserved for it: app-1"):
        repositories.remove_repository(repository)
    assert Repository.objects.filter(name="app").exists()


def test_it_refuses_to_remove_a_repository_while_it_builds(repository):
    build = BuildFactory(repository=repository, commit__repository=repository, status="running")
    with pytest.raises(repositories.RepositoryError, match=f"queued or running: #{build.pk}"):
        repositories.remove_repository(repository)


# Nodes: add -----------------------------------------------------------------------------

def test_it_adds_a_node_reserved_for_a_repository_and_checks_it_at_once(
        repository, tmp_path, operator, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        node = local_node(tmp_path, repository="app", actor=operator)
    node.refresh_from_db()  # the check ran once the test's transaction "committed"
    assert node.repository == repository and node.user == ""
    assert node.health == "healthy" and node.health_message == "reachable via local"
    assert node.last_health_check is not None
    assert Event.objects.filter(kind="node.added", node=node, actor=operator).exists()


def test_an_ssh_node_without_a_pinned_key_says_so_at_once(db, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        node = pool.add_node(name="far", host="127.0.0.1", ssh_port=9, app_port=8080,
                             base_path="/srv/far")
    node.refresh_from_db()
    assert node.health == "unhealthy" and node.health_message  # the reason, right away
    assert node.user == "deploy"


@pytest.mark.parametrize(("fields", "expected"), [
    ({"base_path": "srv/app"}, "must be an absolute path"),
    ({"base_path": "/"}, "cannot be / itself"),
    ({"base_path": "/srv/a\nb"}, "must be an absolute path"),
    ({"app_port": 0}, "app port must be a number from 1 to 65535"),
    ({"app_port": 70000}, "app port must be a number from 1 to 65535"),
    ({"app_port": "8080"}, "app port must be a number"),
    ({"app_port": True}, "app port must be a number"),
    ({"ssh_port": -1}, "SSH port must be a number"),
    ({"transport": "ftp"}, "unknown transport 'ftp'; use ssh or local"),
    ({"environment": "moon"}, "unknown environment 'moon'"),
    ({"name": "bad name"}, "not a usable node name"),
    ({"host": "-oProxyCommand=x"}, "not a host name"),
    ({"transport": "ssh", "user": "-l root"}, "not a user name"),
    ({"env": {"1BAD": "x"}}, "env must map variable names"),
    ({"repository": "nosuch"}, "no repository named 'nosuch'; known: app"),
])
def test_it_refuses_fields_it_cannot_use(repository, tmp_path, fields, expected):
    with pytest.raises(pool.NodeError, match=expected):
        local_node(tmp_path, **fields)
    assert not Node.objects.exists()


def test_nodes_on_one_host_need_their_own_folder_and_port(tmp_path):
    first = local_node(tmp_path, name="one", app_port=9901)
    with pytest.raises(pool.NodeError, match="a node named 'one' exists already"):
        local_node(tmp_path, name="one", app_port=9902, base_path="/srv/elsewhere")
    with pytest.raises(pool.NodeError, match=f"base path {first.base_path} overlaps node one's"):
        local_node(tmp_path, name="two", app_port=9902, base_path=first.base_path + "/")
    with pytest.raises(pool.NodeError, match="overlaps node one's"):
        local_node(tmp_path, name="two", app_port=9902, base_path=first.base_path + "/inner")
    with pytest.raises(pool.NodeError, match="app port 9901 on 127.0.0.1 is node one's already"):
        local_node(tmp_path, name="two", app_port=9901)
    # The same folder on two other machines is two folders.
    pool.add_node(name="a", host="10.0.0.1", app_port=80, base_path="/srv/app")
    pool.add_node(name="b", host="10.0.0.2", app_port=80, base_path="/srv/app")
    with pytest.raises(pool.NodeError, match="overlaps node a's"):
        pool.add_node(name="c", host="10.0.0.1", app_port=81, base_path="/srv/app")


# Nodes: flags and removal ---------------------------------------------------------------

def test_enabling_a_node_checks_its_health_again(tmp_path, operator,
                                                  django_capture_on_commit_callbacks):
    node = local_node(tmp_path)
    assert pool.change_node(node, "disable", actor=operator)
    Node.objects.filter(pk=node.pk).update(health="unhealthy", health_message="stale")
    with django_capture_on_commit_callbacks(execute=True):
        assert pool.change_node(node, "enable", actor=operator)
    node.refresh_from_db()
    assert (node.enabled, node.health) == (True, "healthy")
    assert not pool.change_node(node, "enable")  # already enabled: nothing changes
    assert pool.change_node(node, "drain") and node.draining
    with pytest.raises(pool.NodeError, match="unknown action 'explode'"):
        pool.change_node(node, "explode")


def test_it_refuses_to_remove_a_node_a_build_holds(tmp_path, operator):
    node = local_node(tmp_path)
    build = BuildFactory(status="running")
    Node.objects.filter(pk=node.pk).update(held_by=build)
    with pytest.raises(pool.NodeError, match=f"in use by build #{build.pk}"):
        pool.remove_node(node)
    Node.objects.filter(pk=node.pk).update(held_by=None)
    assert pool.remove_node(node, actor=operator) == "app-1"
    assert not Node.objects.exists()
    assert Event.objects.get(kind="node.removed").actor == operator


# Host keys ------------------------------------------------------------------------------

def test_a_local_node_has_no_host_key_to_pin(tmp_path):
    with pytest.raises(TransportError, match="local transport: it has no host key"):
        pool.offer_host_key(local_node(tmp_path))


@pytest.mark.ssh
def test_it_pins_only_the_key_with_the_fingerprint_a_person_compared(
        ssh_nodes, client_key, settings, django_capture_on_commit_callbacks):
    settings.TRAINYARD = {**settings.TRAINYARD, "SSH_KEY_FILE": str(client_key.path)}
    sshd = ssh_nodes[0]
    node = pool.add_node(name="ssh-1", host=sshd.host, ssh_port=sshd.port, user="root",
                         app_port=8080, base_path=str(sshd.base / "ssh-1"))
    line, offered, token = pool.offer_host_key(node)
    assert offered == keygen_fingerprint(sshd.host_key_pub)
    other = keygen_fingerprint(ssh_nodes[1].host_key_pub)
    with pytest.raises(pool.HostKeyMismatch, match=re.escape(f"offers {offered}, not {other}")):
        pool.pin_host_key(node, token, fingerprint=other)
    with pytest.raises(pool.NodeError, match="SHA256 fingerprint"):
        pool.pin_host_key(node, token, fingerprint="MD5:aa:bb")
    with pytest.raises(signing.BadSignature):
        pool.pin_host_key(node, token + "x", fingerprint=offered)
    node.refresh_from_db()
    assert node.host_key == ""
    with django_capture_on_commit_callbacks(execute=True):
        pool.pin_host_key(node, token, fingerprint=offered + "=")  # padding or not: the same key
    node.refresh_from_db()
    assert node.host_key == sshd.host_key
    # Checked at once: a node that was unhealthy for want of a key is usable now.
    assert node.health == "healthy", node.health_message


# The API --------------------------------------------------------------------------------

def test_reading_the_pool_needs_the_view_permission(client, viewer, operator, tmp_path):
    local_node(tmp_path)
    assert client.get("/api/nodes").status_code == 401
    assert client.get("/api/nodes", **auth(viewer)).status_code == 403
    listed = client.get("/api/nodes", **auth(operator)).json()["nodes"]
    assert [(n["name"], n["pool"], n["transport"]) for n in listed] == [("app-1", "shared", "local")]


def test_changing_the_pool_needs_its_permissions(client, viewer, repository, tmp_path):
    local_node(tmp_path)
    body = {"name": "n2", "transport": "local", "app_port": 9902, "base_path": str(tmp_path / "n2")}
    viewer_auth = auth(viewer)
    assert post_json(client, "/api/nodes", body, **viewer_auth).status_code == 403
    assert post_json(client, "/api/nodes/app-1/disable", {}, **viewer_auth).status_code == 403
    assert client.delete("/api/nodes/app-1", **viewer_auth).status_code == 403
    assert client.get("/api/nodes/app-1/host-key", **viewer_auth).status_code == 403
    assert post_json(client, "/api/repos", {"name": "x", "clone_url": "/x"}, **viewer_auth
                     ).status_code == 403
    assert client.delete("/api/repos/app", **viewer_auth).status_code == 403
    assert Node.objects.count() == 1 and Node.objects.get().enabled
    assert Repository.objects.filter(name="app").exists()


def test_it_registers_a_repository_and_a_node_through_the_api(client, operator, git_repo, tmp_path,
                                                               django_capture_on_commit_callbacks):
    headers = auth(operator)
    added = post_json(client, "/api/repos", {"name": "shop", "clone_url": str(git_repo.path)}, **headers)
    assert added.status_code == 201, added.content
    with django_capture_on_commit_callbacks(execute=True):
        node = post_json(client, "/api/nodes", {
            "name": "shop-1", "transport": "local", "app_port": 9911, "repository": "shop",
            "base_path": str(tmp_path / "shop-1"), "env": {"APP_MODE": "branch"}}, **headers)
    assert node.status_code == 201, node.content
    assert node.json()["pool"] == "shop"
    assert Node.objects.get(name="shop-1").health == "healthy"  # checked once "committed"
    listed = client.get("/api/repos").json()["repositories"]
    assert [(r["name"], r["nodes"]) for r in listed] == [("shop", ["shop-1"])]
    refused = client.delete("/api/repos/shop", **headers)
    assert refused.status_code == 409 and "reserved for it: shop-1" in refused.json()["error"]
    drained = post_json(client, "/api/nodes/shop-1/drain", {}, **headers).json()
    assert drained["changed"] and drained["node"]["draining"]
    assert post_json(client, "/api/nodes/shop-1/explode", {}, **headers).status_code == 404
    assert client.delete("/api/nodes/shop-1", **headers).status_code == 200
    assert client.delete("/api/repos/shop", **headers).json()["removed"] == "shop"


@pytest.mark.parametrize(("body", "expected"), [
    ({"name": "n"}, "'base_path', 'app_port' required"),
    ({"name": "n", "base_path": "/srv/n", "app_port": 1, "colour": "red"}, "unknown field(s) colour"),
    ({"name": "n", "base_path": "srv", "app_port": 1}, "must be an absolute path"),
])
def test_it_answers_bad_node_fields_with_a_sentence(client, operator, body, expected):
    response = post_json(client, "/api/nodes", body, **auth(operator))
    assert response.status_code == 400 and expected in response.json()["error"]


def test_it_hides_clone_url_credentials_from_everyone(client, db):
    RepositoryFactory(name="private", clone_url="https://x-access-token:s3cr3t@example.com/o/r.git")
    for response in (client.get("/api/repos"), client.get("/api/repos/private")):
        assert b"s3cr3t" not in response.content and b"***@example.com" in response.content


def test_unknown_nodes_are_named_with_those_that_exist(client, operator, tmp_path):
    local_node(tmp_path)
    missing = post_json(client, "/api/nodes/nope/enable", {}, **auth(operator))
    assert missing.status_code == 404
    assert missing.json()["error"] == "no node named 'nope'; known: app-1"


@pytest.mark.ssh
def test_it_pins_a_host_key_through_the_api_only_on_a_matching_fingerprint(client, operator,
                                                                           ssh_nodes):
    sshd = ssh_nodes[0]
    pool.add_node(name="ssh-1", host=sshd.host, ssh_port=sshd.port, app_port=8080,
                  base_path="/srv/ssh-1")
    headers = auth(operator)
    offer = client.get("/api/nodes/ssh-1/host-key", **headers).json()
    assert offer["fingerprint"] == keygen_fingerprint(sshd.host_key_pub)
    assert offer["pinned_fingerprint"] is None
    wrong = post_json(client, "/api/nodes/ssh-1/host-key",
                      {"token": offer["token"], "fingerprint": "SHA256:" + "A" * 43}, **headers)
    assert wrong.status_code == 409 and "not pinned" in wrong.json()["error"]
    unconfirmed = post_json(client, "/api/nodes/ssh-1/host-key", {"token": offer["token"]}, **headers)
    assert unconfirmed.status_code == 400 and "'fingerprint' required" in unconfirmed.json()["error"]
    assert Node.objects.get(name="ssh-1").host_key == ""
    pinned = post_json(client, "/api/nodes/ssh-1/host-key",
                       {"token": offer["token"], "fingerprint": offer["fingerprint"]}, **headers)
    assert pinned.status_code == 200, pinned.content
    assert pinned.json()["node"]["host_key_fingerprint"] == offer["fingerprint"]
    assert Node.objects.get(name="ssh-1").host_key == sshd.host_key
