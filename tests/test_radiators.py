"""Radiator pages, snapshot.json and the read-only websocket.

The socket tests go through the channel layer the settings configure: the in-process
layer by default, Redis pub/sub with REDIS_URL set.
"""

import copy
import json
from html.parser import HTMLParser
from unittest import mock

import pytest
from asgiref.sync import async_to_sync
from asgiref.testing import ApplicationCommunicator
from channels.layers import get_channel_layer
from django.urls import reverse

from pipeline.asgi import application
from tests.factories import BuildFactory, CommitFactory, JobFactory, RepositoryFactory, UserFactory
from tests.helpers import off_main_thread

ORIGIN = (b"origin", b"http://127.0.0.1")


# Helpers --------------------------------------------------------------------------------

class Page(HTMLParser):
    """What a wall page carries: its scripts, inline event handlers, forms and buttons."""

    def __init__(self, html):
        super().__init__()
        self.scripts, self.handlers, self.forms, self.buttons = [], [], 0, 0
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "script" and "src" in attrs:
            self.scripts.append(attrs["src"])
        self.handlers += [name for name in attrs if name.startswith("on")]
        self.forms += tag == "form"
        self.buttons += tag == "button"


def embedded_snapshot(html):
    """The snapshot the page carries for radiator.js (json_script, not executed)."""
    start = html.index('<script id="wall-snapshot" type="application/json">')
    body = html[html.index(">", start) + 1:html.index("</script>", start)]
    return json.loads(body)


def make_build(repository, status, jobs=(), branch="feature/x", user=None):
    build = BuildFactory(commit=CommitFactory(repository=repository), status=status,
                         branch=branch, requested_by=user)
    for name, job_status in jobs:
        JobFactory(build=build, name=name, status=job_status)
    return build


@pytest.fixture
def demo(db):
    return RepositoryFactory(name="demo")


@pytest.fixture
def channel_layer(settings):
    """The configured layer, fresh for this test.

    Assigning the setting makes Channels drop its cached layer (and again when the test
    ends). The in-process layer binds to the first event loop that uses it, and every
    test here runs its own loop.
    """
    settings.CHANNEL_LAYERS = copy.deepcopy(settings.CHANNEL_LAYERS)
    return get_channel_layer()


class Socket(ApplicationCommunicator):
    """A websocket client talking to Trainyard's ASGI application in-process.

    channels.testing.WebsocketCommunicator does the same, but importing channels.testing
    needs daphne, which Trainyard does not install (it is served by uvicorn). Like
    Channels' own communicator, it keeps the test's database connection open.
    """

    def __init__(self, path, headers):
        super().__init__(application, {"type": "websocket", "path": path, "query_string": b"",
                                       "headers": headers, "subprotocols": []})

    async def send_input(self, message):
        with mock.patch("channels.db.close_old_connections", lambda: None):
            return await super().send_input(message)

    async def receive_output(self, timeout=1):
        with mock.patch("channels.db.close_old_connections", lambda: None):
            return await super().receive_output(timeout)

    async def connect(self, timeout=5):
        """(True, None) when accepted, (False, close code) when refused."""
        await self.send_input({"type": "websocket.connect"})
        response = await self.receive_output(timeout)
        if response["type"] == "websocket.close":
            return False, response.get("code", 1000)
        assert response["type"] == "websocket.accept"
        return True, None

    async def send_to(self, text_data=None, bytes_data=None):
        frame = {"text": text_data} if text_data is not None else {"bytes": bytes_data}
        await self.send_input({"type": "websocket.receive", **frame})

    async def send_json_to(self, data):
        await self.send_to(text_data=json.dumps(data))

    async def receive_json_from(self, timeout=5):
        response = await self.receive_output(timeout)
        assert response["type"] == "websocket.send", response
        return json.loads(response["text"])

    async def disconnect(self, code=1000, timeout=5):
        await self.send_input({"type": "websocket.disconnect", "code": code})
        await self.wait(timeout)


def socket(path, origin=ORIGIN):
    return Socket(path, [origin] if origin else [])


def run(scenario):
    """Run an async scenario to completion from a sync test, in a thread of its own: once
    a browser test has run, Playwright's event loop may occupy the main thread, where
    `async_to_sync` refuses to run."""
    off_main_thread(async_to_sync(scenario))


# The page ------------------------------------------------------------------------------

def test_anonymous_viewers_get_the_wall_with_its_snapshot_and_no_controls(
        client, demo, django_assert_max_num_queries):
    alice = UserFactory(username="alice")
    failed = make_build(demo, "failed", [("lint", "passed"), ("unit", "failed")],
                        branch="feature/broken", user=alice)
    running = make_build(demo, "running", [("lint", "running"), ("unit", "queued")],
                         branch="feature/live")
    other = make_build(RepositoryFactory(name="other"), "passed", [("lint", "passed")])

    with django_assert_max_num_queries(10):
        response = client.get("/radiators/demo/")

    assert response.status_code == 200
    html = response.content.decode()
    snapshot = embedded_snapshot(html)
    builds = snapshot["panels"]["builds"]
    assert [b["id"] for b in builds["running"]] == [running.pk]
    assert [(j["name"], j["status"]) for j in builds["running"][0]["jobs"]] == [
        ("lint", "running"), ("unit", "queued")]
    assert [b["id"] for b in builds["finished"]] == [failed.pk]
    assert other.pk not in {b["id"] for b in builds["running"] + builds["finished"]}
    # Read-only for anonymous viewers: no forms, no buttons; scripts are static files and
    # data sits in attributes and a JSON block (the CSP allows no inline code).
    page = Page(html)
    assert (page.forms, page.buttons, page.handlers) == (0, 0, [])
    assert page.scripts == ["/static/radiators/live.js", "/static/radiators/radiator.js"]
    assert 'data-snapshot-url="/radiators/demo/snapshot.json"' in html
    assert 'data-socket-url="/ws/radiators/demo/"' in html
    assert "csrf" not in html.lower()
    assert response["Cache-Control"].startswith("max-age=0")


def test_the_wall_of_all_repositories_shows_every_repository(client, demo):
    mine = make_build(demo, "running", [("lint", "running")])
    theirs = make_build(RepositoryFactory(name="other"), "running", [("lint", "running")])
    snapshot = embedded_snapshot(client.get("/radiators/").content.decode())
    assert snapshot["repository"] is None
    assert {b["id"] for b in snapshot["panels"]["builds"]["running"]} == {mine.pk, theirs.pk}


def test_it_answers_404_for_an_unknown_repository(client, db):
    assert client.get("/radiators/nope/").status_code == 404
    assert client.get("/radiators/nope/snapshot.json").status_code == 404


def test_it_refuses_writes_over_http(client, demo):
    assert client.post("/radiators/demo/").status_code == 405
    assert client.post("/radiators/demo/snapshot.json").status_code == 405


def test_private_walls_send_anonymous_viewers_to_log_in(client, demo, settings):
    settings.TRAINYARD = {**settings.TRAINYARD, "WALLS_PUBLIC": False}
    response = client.get("/radiators/demo/")
    assert response.status_code == 302 and "/login/" in response["Location"]
    assert client.get("/radiators/demo/snapshot.json").status_code == 302
    client.force_login(UserFactory(username="viewer"))
    assert client.get("/radiators/demo/").status_code == 200


# snapshot.json ---------------------------------------------------------------------------

def test_it_serves_the_same_snapshot_as_json(client, demo):
    running = make_build(demo, "running", [("lint", "running")], branch="feature/live")

    response = client.get(reverse("radiators:snapshot", args=["demo"]))

    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert "no-cache" in response["Cache-Control"]
    data = response.json()
    assert (data["repository"], bool(data["now"]), bool(data["version"])) == ("demo", True, True)
    assert set(data["panels"]) >= {"branches", "train", "builds", "environments", "tests",
                                   "nodes"}
    row = data["panels"]["builds"]["running"][0]
    assert (row["id"], row["branch"], row["status"], row["sha"]) == (
        running.pk, "feature/live", "running", running.sha[:10])
    assert row["url"] == f"/builds/{running.pk}/"
    # Small whatever the history: never a command or a log.
    assert "command" not in json.dumps(data) and "log" not in row


# The socket ------------------------------------------------------------------------------
# What the socket sends, and to whom, is in tests/test_wall_live.py.


@pytest.mark.parametrize("origin", [None, (b"origin", b"http://evil.example")])
@pytest.mark.django_db(transaction=True)
def test_it_refuses_sockets_from_other_sites(channel_layer, demo, origin):
    async def scenario():
        connected, _ = await socket("/ws/radiators/demo/", origin=origin).connect()
        assert not connected

    run(scenario)
