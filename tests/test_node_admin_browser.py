"""Adding an SSH node in the admin, in headless Chromium: "Save and fetch host key…" keeps
what was typed, shows the key's fingerprint, pins it on confirmation, and the node is checked at
once (healthy within seconds, not at the next 30 s health round)."""

import pytest
from playwright.sync_api import expect

from nodes.models import Node
from tests.helpers import wait_until
from tests.sshd import keygen_fingerprint

pytestmark = [pytest.mark.browser, pytest.mark.ssh, pytest.mark.django_db(transaction=True)]
LIVE = 30_000


def log_in(page, asgi_server, user):
    from django.conf import settings
    from django.test import Client

    client = Client()
    client.force_login(user)
    page.context.add_cookies([{"name": settings.SESSION_COOKIE_NAME, "url": asgi_server.url,
                               "value": client.cookies[settings.SESSION_COOKIE_NAME].value}])


def test_it_adds_an_ssh_node_fetches_and_pins_its_key_and_checks_it(
        page, asgi_server, worker, admin_user, ssh_nodes, client_key, settings):
    settings.TRAINYARD = {**settings.TRAINYARD, "SSH_KEY_FILE": str(client_key.path)}
    sshd = ssh_nodes[1]
    log_in(page, asgi_server, admin_user)
    page.goto(f"{asgi_server.url}/admin/nodes/node/add/")
    page.fill("#id_name", "web-7")
    page.select_option("#id_transport", "ssh")
    page.fill("#id_host", sshd.host)
    page.fill("#id_ssh_port", str(sshd.port))
    page.fill("#id_user", "root")
    page.fill("#id_base_path", str(sshd.base / "web-7"))
    page.get_by_role("button", name="Save and fetch host key…").click()

    expect(page.locator("#content-main")).to_contain_text(keygen_fingerprint(sshd.host_key_pub),
                                                          timeout=LIVE)
    node = Node.objects.get(name="web-7")  # saved with what was typed, nothing lost
    assert (node.host, node.ssh_port, node.user) == (sshd.host, sshd.port, "root")
    assert node.host_key == ""  # looking pins nothing
    page.get_by_role("button", name="Pin this key").click()
    expect(page.locator("ul.messagelist")).to_contain_text("Host key pinned", timeout=LIVE)
    wait_until(lambda: Node.objects.get(pk=node.pk).health == Node.Health.HEALTHY, timeout=30,
               message="the node's health check right after pinning")
    assert Node.objects.get(pk=node.pk).host_key == sshd.host_key
