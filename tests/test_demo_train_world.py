"""The demo world a train runs in, as `make run` and `manage.py seed_demo` make it: local
nodes for every environment reserved for the demo, and its two authors alice and bob.
(The processes themselves: tests/test_standalone.py.)"""

import io
import stat
import subprocess

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from nodes.models import Node
from pipeline import permissions
from pipeline.services import standalone

FIRST_PORT = 9101
TRAIN_NODES = {  # name -> (environment, off-cycle, app port)
    "staging-1": ("staging", False, 9201),
    "preview-1": ("preview", False, 9202),
    "preprod-1": ("preprod", False, 9203),
    "production-1": ("production", True, 9204),
    "production-2": ("production", False, 9205),
    "production-3": ("production", False, 9206),
}


@pytest.fixture
def var(db, settings, tmp_path):
    settings.VAR_DIR = tmp_path / "var"
    settings.TRAINYARD = {**settings.TRAINYARD, "NODE_BASE_DIR": tmp_path / "var" / "nodes",
                          "NODE_FIRST_PORT": FIRST_PORT}
    return tmp_path / "var"


def seed():
    out = io.StringIO()
    call_command("seed_demo", stdout=out)
    return out.getvalue()


def password_in(path):
    text = path.read_text()
    assert text.startswith(f"username: {path.name.split('-')[0]}\npassword: "), text
    return text.split("password: ")[1].strip()


def test_it_creates_the_train_nodes_once_reserved_for_the_demo(var):
    said = seed()
    nodes = Node.objects.exclude(environment=Node.Environment.BRANCH)
    assert {n.name: (n.environment, n.off_cycle, n.app_port) for n in nodes} == TRAIN_NODES
    for node in nodes:
        assert node.repository.name == "demo", node.name
        assert (node.transport, node.host, node.user) == ("local", "127.0.0.1", ""), node.name
        assert node.base_path == str(var / "nodes" / node.name)
        assert node.enabled and not node.draining, node.name
    branch_ports = set(Node.objects.branch_pool().values_list("app_port", flat=True))
    assert branch_ports == set(range(9101, 9111))
    assert "production-1 (production, off-cycle)" in said
    # The admin takes a node out of use; the next start keeps that and adds nothing.
    Node.objects.filter(name="production-3").update(enabled=False)
    before = sorted(Node.objects.values_list("pk", "name", "app_port"))
    seed()
    assert sorted(Node.objects.values_list("pk", "name", "app_port")) == before
    assert not Node.objects.get(name="production-3").enabled


def test_it_leaves_the_train_nodes_out_of_the_branch_pool(var):
    seed()
    from nodes.services.allocation import has_branch_pool

    assert set(Node.objects.branch_pool().values_list("name", flat=True)) == {
        f"branch-{n:02d}" for n in range(1, 11)}
    Node.objects.branch_pool().update(enabled=False)
    demo = Node.objects.get(name="staging-1").repository
    assert not has_branch_pool(demo)


def test_it_refuses_branch_nodes_that_would_take_the_train_nodes_ports(var):
    with pytest.raises(ValueError, match="at most 100 local branch nodes"):
        standalone.seed_local_nodes(count=101)


def test_it_creates_alice_and_bob_once_as_team_members(var):
    said = seed()
    User = get_user_model()
    for username in ("alice", "bob"):
        path = var / f"{username}-credentials.txt"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        password = password_in(path)
        assert f"{username} login (shown once, kept in {path}): {username} / {password}" in said
        user = User.objects.get(username=username)
        assert user.email == f"{username}@example.com"
        assert user.check_password(password)
        assert not (user.is_superuser or user.is_staff)
        assert sorted(f"pipeline.{p.codename}" for p in user.user_permissions.all()) == sorted(
            standalone.TEAM_PERMISSIONS)
        for action in ("build", "open_pull_request", "close_pull_request", "merge", "lgtm"):
            assert permissions.can(user, action), (username, action)
        assert not permissions.can(user, "act_for_others")
        assert not user.has_perm("pipeline.release_manager")
    assert User.objects.get(username="admin").has_perm("pipeline.release_manager")

    kept = {name: (var / f"{name}-credentials.txt").read_text() for name in ("alice", "bob")}
    hashes = dict(User.objects.values_list("username", "password"))
    again = seed()
    assert "alice login: see" in again and "bob login: see" in again
    assert "password" not in again.replace("credentials", "")
    assert {name: (var / f"{name}-credentials.txt").read_text() for name in kept} == kept
    assert dict(User.objects.values_list("username", "password")) == hashes


def test_it_gives_an_existing_teammate_back_the_permissions_a_team_member_needs(var):
    seed()
    bob = get_user_model().objects.get(username="bob")
    bob.user_permissions.clear()
    assert standalone.ensure_team() == {"alice": None, "bob": None}
    bob = get_user_model().objects.get(username="bob")  # a fresh permission cache
    assert permissions.can(bob, "lgtm")


def test_it_makes_the_demo_authors_the_teammates(var):
    """A train maps its commits' authors to users by e-mail: the demo's feature branches
    must be alice's and bob's."""
    repository = standalone.seed_demo()
    standalone.ensure_team()
    emails = dict(get_user_model().objects.values_list("email", "username"))
    for branch, author in (("feature/hello", "alice"), ("feature/bye", "bob")):
        email = subprocess.run(["git", "-C", repository.clone_url, "log", "-1", "--format=%ae",
                                branch], capture_output=True, text=True, check=True).stdout.strip()
        assert emails.get(email) == author, branch
