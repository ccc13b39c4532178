"""Node pool management in the Django admin."""

import re

import pytest

from nodes.models import Deployment, Node
from pipeline.models import Event
from tests.factories import BuildFactory
from tests.sshd import keygen_fingerprint


@pytest.fixture
def node(db, tmp_path):
    return Node.objects.create(name="branch-1", transport="local", app_port=9999,
                               base_path=str(tmp_path / "n1"))


def test_it_lists_nodes_with_their_state_and_filters(admin_client, node):
    Node.objects.create(name="stage-1", environment="staging", base_path="/srv/x", health="unhealthy")
    page = admin_client.get("/admin/nodes/node/?environment__exact=branch")
    assert page.status_code == 200
    body = page.content.decode()
    assert "branch-1" in body and "stage-1" not in body and "never used" in body
    assert admin_client.get("/admin/nodes/node/?health__exact=unhealthy").status_code == 200


@pytest.mark.parametrize(("action", "field", "value"), [
    ("disable", "enabled", False), ("drain", "draining", True), ("mark_off_cycle", "off_cycle", True)])
def test_it_applies_pool_actions_and_records_who_did_it(admin_client, admin_user, node, action,
                                                        field, value):
    response = admin_client.post("/admin/nodes/node/", {"action": action,
                                                        "_selected_action": [node.pk]})
    assert response.status_code == 302
    node.refresh_from_db()
    assert getattr(node, field) is value
    event = Event.objects.get(kind=f"node.{action}")
    assert event.node == node and event.actor == admin_user


def test_it_shows_each_nodes_deploy_history(admin_client, node):
    build = BuildFactory()
    Deployment.objects.create(node=node, build=build, sha=build.sha, branch="feature/x",
                              status="succeeded")
    page = admin_client.get(f"/admin/nodes/node/{node.pk}/change/").content.decode()
    assert build.sha in page and "feature/x" in page


def test_viewers_cannot_reach_the_admin(client, viewer, node):
    client.force_login(viewer)
    assert client.get("/admin/nodes/node/").status_code == 302  # to the login page


@pytest.mark.ssh
def test_it_pins_a_host_key_only_after_a_person_confirms(admin_client, ssh_nodes):
    sshd = ssh_nodes[0]
    node = Node.objects.create(name="ssh-1", host=sshd.host, ssh_port=sshd.port, base_path="/srv/a")
    page = admin_client.get(f"/admin/nodes/node/{node.pk}/host-key/").content.decode()
    assert keygen_fingerprint(sshd.host_key_pub) in page
    node.refresh_from_db()
    assert node.host_key == ""  # looking pins nothing
    token = re.search(r'name="token" value="([^"]+)"', page).group(1)
    forged = admin_client.post(f"/admin/nodes/node/{node.pk}/host-key/", {"token": token + "x"})
    assert forged.status_code == 302
    node.refresh_from_db()
    assert node.host_key == ""
    admin_client.post(f"/admin/nodes/node/{node.pk}/host-key/", {"token": token})
    node.refresh_from_db()
    assert node.host_key == sshd.host_key
    assert Event.objects.filter(kind="node.host_key", node=node).exists()


def test_it_says_why_a_host_key_cannot_be_fetched(admin_client):
    node = Node.objects.create(name="gone", host="127.0.0.1", ssh_port=9, base_path="/srv/a")
    page = admin_client.get(f"/admin/nodes/node/{node.pk}/host-key/").content.decode()
    assert "127.0.0.1:9" in page and "Pin this key" not in page
