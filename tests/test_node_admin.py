"""Node pool management in the Django admin."""

import re

import pytest

from nodes.models import Deployment, Node
from pipeline.models import Event
from tests.factories import BuildFactory, RepositoryFactory, UserFactory
from tests.helpers import wait_until
from tests.sshd import generate_key, keygen_fingerprint


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


# Pools ---------------------------------------------------------------------------------

def test_it_shows_and_filters_each_nodes_pool(admin_client, node):
    app = RepositoryFactory(name="app")
    Node.objects.create(name="app-only", repository=app, base_path="/srv/app-only")
    page = admin_client.get("/admin/nodes/node/").content.decode()
    assert re.search(r'field-pool">shared<', page) and re.search(r'field-pool">app<', page)
    reserved = admin_client.get(f"/admin/nodes/node/?pool={app.pk}").content.decode()
    assert "app-only" in reserved and "branch-1" not in reserved
    shared = admin_client.get("/admin/nodes/node/?pool=shared").content.decode()
    assert "branch-1" in shared and "app-only" not in shared


def test_it_reserves_a_node_for_a_repository_in_its_form(admin_client, node):
    app = RepositoryFactory(name="app")
    form = admin_client.get(f"/admin/nodes/node/{node.pk}/change/").content.decode()
    assert 'name="repository"' in form
    data = {**form_values(node), "repository": app.pk}
    response = admin_client.post(f"/admin/nodes/node/{node.pk}/change/", data)
    assert response.status_code == 302, response.content.decode()[:2000]
    node.refresh_from_db()
    assert node.repository == app


def form_values(node):
    """What the change form posts for `node` as it is."""
    return {"name": node.name, "environment": node.environment, "repository": "",
            "transport": node.transport, "host": node.host, "ssh_port": node.ssh_port,
            "user": node.user, "app_port": node.app_port, "base_path": node.base_path,
            "env": "{}", "enabled": "on" if node.enabled else "",
            "deployments-TOTAL_FORMS": "0", "deployments-INITIAL_FORMS": "0"}


# Findings ------------------------------------------------------------------------------

def test_fetch_host_key_on_the_add_page_saves_the_form_and_goes_on(admin_client):
    page = admin_client.get("/admin/nodes/node/add/").content.decode()
    # A submit button that keeps what was typed, not a link away from the form.
    assert re.search(r'<input type="submit" value="Save and fetch host key…" name="_fetch_host_key"',
                     page)
    data = {**form_values(Node(name="new-1", host="127.0.0.1", ssh_port=9, user="deploy",
                               app_port=8081, base_path="/srv/new-1")),
            "transport": "ssh", "_fetch_host_key": "1"}
    response = admin_client.post("/admin/nodes/node/add/", data)
    node = Node.objects.get(name="new-1")  # what was typed is kept
    assert node.ssh_port == 9 and node.base_path == "/srv/new-1"
    assert response.status_code == 302
    assert response["Location"] == f"/admin/nodes/node/{node.pk}/host-key/"


def test_the_re_pin_page_shows_the_pinned_keys_fingerprint(admin_client, tmp_path):
    pinned = generate_key(tmp_path / "old_host_key")
    node = Node.objects.create(name="moved", host="127.0.0.1", ssh_port=9, base_path="/srv/a",
                               host_key=pinned)
    fingerprint = keygen_fingerprint(tmp_path / "old_host_key.pub")
    page = admin_client.get(f"/admin/nodes/node/{node.pk}/host-key/").content.decode()
    assert fingerprint in page  # even while the node cannot be reached
    change = admin_client.get(f"/admin/nodes/node/{node.pk}/change/").content.decode()
    assert fingerprint in change


def test_staff_without_the_permission_get_403_from_the_host_key_page(client, node):
    staff = UserFactory(username="staffer", is_staff=True, perms=["nodes.view_node"])
    client.force_login(staff)
    assert client.get(f"/admin/nodes/node/{node.pk}/host-key/").status_code == 403
    assert client.post(f"/admin/nodes/node/{node.pk}/host-key/", {"token": "x"}).status_code == 403


def test_a_disabled_node_shows_disabled_not_its_last_health(admin_client, node):
    Node.objects.filter(pk=node.pk).update(enabled=False, health="healthy",
                                           health_message="reachable via local")
    page = admin_client.get("/admin/nodes/node/").content.decode()
    cell = re.search(r'<td class="field-health_display">(.*?)</td>', page, re.S).group(1)
    assert "disabled" in cell and ">healthy<" not in cell
    assert "not checked while disabled" in cell


@pytest.mark.django_db(transaction=True)
def test_a_node_added_in_the_admin_is_checked_at_once(worker, admin_client, tmp_path):
    data = {**form_values(Node(name="fresh", host="127.0.0.1", user="", app_port=9998,
                               base_path=str(tmp_path / "fresh"))), "transport": "local"}
    assert admin_client.post("/admin/nodes/node/add/", data).status_code == 302
    wait_until(lambda: Node.objects.get(name="fresh").health == "healthy", timeout=30,
               message="the new node's first health check")


@pytest.mark.django_db(transaction=True)
def test_enabling_a_node_checks_it_at_once(worker, admin_client, node):
    Node.objects.filter(pk=node.pk).update(enabled=False, health="unhealthy")
    admin_client.post("/admin/nodes/node/", {"action": "enable", "_selected_action": [node.pk]})
    wait_until(lambda: Node.objects.get(pk=node.pk).health == "healthy", timeout=30,
               message="the enabled node's health check")


@pytest.mark.ssh
@pytest.mark.django_db(transaction=True)
def test_a_re_pinned_node_is_checked_at_once(worker, admin_client, ssh_nodes, client_key, settings):
    settings.TRAINYARD = {**settings.TRAINYARD, "SSH_KEY_FILE": str(client_key.path)}
    sshd = ssh_nodes[0]
    node = Node.objects.create(name="ssh-1", host=sshd.host, ssh_port=sshd.port, user="root",
                               base_path="/srv/a", health="unhealthy",
                               health_message="offered another host key")
    page = admin_client.get(f"/admin/nodes/node/{node.pk}/host-key/").content.decode()
    token = re.search(r'name="token" value="([^"]+)"', page).group(1)
    admin_client.post(f"/admin/nodes/node/{node.pk}/host-key/", {"token": token})
    wait_until(lambda: Node.objects.get(pk=node.pk).health == "healthy", timeout=30,
               message="the re-pinned node's health check")
