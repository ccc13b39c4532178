"""Kiosk tokens: issued with the raw key shown once (only its hash stored), verified,
revoked; the kiosk page shows its wall with no controls, forms or user; the token
cannot post anything and reads nothing else. The socket side is in test_wall_live.py."""

import hashlib
import re
from io import StringIO

import pytest
from django.core.management import call_command
from django.test import Client

from radiators import kiosk
from radiators.models import KioskToken
from tests.factories import RepositoryFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def demo(db):
    return RepositoryFactory(name="demo")


def test_issuing_stores_only_the_keys_hash(demo):
    boss = UserFactory(username="boss")
    token, raw = kiosk.issue(demo, "east wall", created_by=boss)
    stored = KioskToken.objects.get()
    assert raw.startswith("tyk_") and len(raw) > 40
    assert stored.key_hash == hashlib.sha256(raw.encode()).hexdigest()
    assert stored.prefix == raw[:8]
    assert raw not in str(KioskToken.objects.values().get())
    assert (stored.repository, stored.name, stored.created_by) == (demo, "east wall", boss)
    assert kiosk.issue(demo, "west wall")[1] != raw


def test_a_token_verifies_until_it_is_revoked(demo):
    token, raw = kiosk.issue(demo, "east wall")
    assert kiosk.verify(raw) == token
    for wrong in ("", None, raw[:-1], raw + "x", "ty_" + raw[4:], "tyk_" + "a" * 200):
        assert kiosk.verify(wrong) is None
    assert kiosk.revoke(token) is True
    assert token.revoked_at is not None
    assert kiosk.verify(raw) is None
    assert kiosk.lookup(raw) == token  # known, and known to be revoked
    assert kiosk.revoke(token) is False  # once is enough


def test_the_kiosk_page_shows_its_wall_without_controls_forms_or_user(client, demo):
    _, raw = kiosk.issue(demo, "east wall")
    client.force_login(UserFactory(username="release-manager", is_staff=True))

    response = client.get(f"/radiators/kiosk/{raw}/")

    assert response.status_code == 200
    html = response.content.decode()
    assert "demo" in html
    for control in ("<form", "<button", "<input", "<textarea", "<select", "csrfmiddlewaretoken"):
        assert control not in html, control
    assert "release-manager" not in html
    assert response["Referrer-Policy"] == "no-referrer"  # the token is in the URL
    assert "no-cache" in response["Cache-Control"]
    # The page's socket carries the token (the wall's template puts this in data-socket-url).
    assert response.wsgi_request.wall_socket_url == f"/ws/radiators/demo/?kiosk={raw}"
    assert KioskToken.objects.get().last_used_at is not None


def test_unknown_and_revoked_kiosk_links_show_nothing(client, demo):
    token, raw = kiosk.issue(demo, "east wall")
    assert client.get("/radiators/kiosk/tyk_nope/").status_code == 404
    kiosk.revoke(token)
    response = client.get(f"/radiators/kiosk/{raw}/")
    assert response.status_code == 410
    assert "demo" not in response.content.decode()


def test_the_token_cannot_post_anything(demo):
    _, raw = kiosk.issue(demo, "east wall")
    # The page itself takes no POST, even past CSRF (which the real browser cannot pass).
    assert Client().post(f"/radiators/kiosk/{raw}/").status_code == 405
    assert Client().post(f"/radiators/kiosk/{raw}/", {"command": "!bb master"}).status_code == 405
    client = Client(enforce_csrf_checks=True)
    client.get(f"/radiators/kiosk/{raw}/")  # a screen that opened its page
    bearer = {"HTTP_AUTHORIZATION": f"Bearer {raw}"}
    assert client.post("/api/repos/demo/builds", {"branch": "master"}, **bearer,
                       content_type="application/json").status_code == 401
    assert client.post("/api/repos/demo/commands", {"text": "!bb master"}, **bearer,
                       content_type="application/json").status_code == 401
    assert client.post(f"/repos/demo/build?kiosk={raw}", {"branch": "master"}).status_code == 403
    from pipeline.models import Build

    assert not Build.objects.exists()


def test_the_token_reads_nothing_else(demo, settings):
    settings.TRAINYARD = {**settings.TRAINYARD, "WALLS_PUBLIC": False}
    _, raw = kiosk.issue(demo, "east wall")
    client = Client()
    bearer = {"HTTP_AUTHORIZATION": f"Bearer {raw}"}
    assert client.get("/api/repos", **bearer).status_code == 401  # not an API token
    # Carried along, it adds nothing to what an anonymous visitor gets.
    for path in ("/api/repos", "/api/repos/demo/builds", "/inbox/", "/admin/", "/repos/demo/"):
        anonymous = client.get(path)
        with_token = client.get(f"{path}?kiosk={raw}")
        assert (with_token.status_code, with_token.get("Location", "").split("?")[0]) == (
            anonymous.status_code, anonymous.get("Location", "").split("?")[0]), path
        assert with_token.content == anonymous.content or path.startswith("/repos/"), path
    assert client.get(f"/inbox/?kiosk={raw}").status_code == 302  # to the login page
    # Opening the kiosk page signs nobody in: afterwards, the same browser is still nobody.
    assert client.get(f"/radiators/kiosk/{raw}/").status_code == 200
    assert "_auth_user_id" not in client.session
    assert client.get("/inbox/").status_code == 302
    assert not kiosk.can_view_walls(client.get("/").wsgi_request.user)


def test_walls_are_public_by_default_and_private_on_request(settings):
    from django.contrib.auth.models import AnonymousUser

    assert kiosk.can_view_walls(AnonymousUser())
    settings.TRAINYARD = {**settings.TRAINYARD, "WALLS_PUBLIC": False}
    assert not kiosk.can_view_walls(AnonymousUser())
    assert kiosk.can_view_walls(UserFactory(username="member"))
    assert not kiosk.can_view_walls(UserFactory(username="gone", is_active=False))


# The command line and the admin ---------------------------------------------------------

def kiosk_command(*args):
    out = StringIO()
    call_command("kiosk", *args, stdout=out)
    return out.getvalue()


def test_the_command_issues_lists_and_revokes(demo, settings):
    settings.TRAINYARD = {**settings.TRAINYARD, "PUBLIC_URL": "https://ci.example.com"}
    issued = kiosk_command("issue", "demo", "--name", "east wall")
    link = re.search(r"https://ci\.example\.com/radiators/kiosk/(tyk_\S+)/", issued)
    assert link, issued
    token = kiosk.verify(link.group(1))
    assert token.name == "east wall" and token.repository == demo
    kiosk_command("issue", "-", "--name", "lobby")
    assert KioskToken.objects.get(name="lobby").repository is None

    listing = kiosk_command("list")
    assert "demo" in listing and "(all)" in listing and token.prefix in listing
    assert link.group(1) not in listing  # never shown again

    assert "revoked" in kiosk_command("revoke", str(token.pk))
    assert kiosk.verify(link.group(1)) is None
    assert "already revoked" in kiosk_command("revoke", str(token.pk))


def test_the_command_refuses_an_unknown_repository_or_token(db):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="no repository named 'nope'"):
        kiosk_command("issue", "nope", "--name", "x")
    with pytest.raises(CommandError, match="no kiosk token 99"):
        kiosk_command("revoke", "99")


def test_the_admin_shows_a_new_key_once_and_revokes(client, admin_user, demo):
    client.force_login(admin_user)
    response = client.post("/admin/radiators/kiosktoken/add/",
                           {"repository": demo.pk, "name": "east wall"})
    assert response.status_code == 200
    html = response.content.decode()
    raw = re.search(r"/radiators/kiosk/(tyk_[^/]+)/", html).group(1)
    token = kiosk.verify(raw)
    assert token.name == "east wall" and token.created_by == admin_user
    assert "no-cache" in response["Cache-Control"]
    change = client.get(f"/admin/radiators/kiosktoken/{token.pk}/change/").content.decode()
    listing = client.get("/admin/radiators/kiosktoken/").content.decode()
    assert raw not in change and raw not in listing and token.prefix in listing

    response = client.post("/admin/radiators/kiosktoken/", {
        "action": "revoke_selected", "_selected_action": [token.pk]})
    assert response.status_code == 302
    assert kiosk.verify(raw) is None
