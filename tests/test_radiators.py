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
from radiators.views import RECENT_BUILDS
from tests.factories import BuildFactory, CommitFactory, JobFactory, RepositoryFactory, UserFactory
from tests.helpers import off_main_thread

ORIGIN = (b"origin", b"http://127.0.0.1")


# Helpers --------------------------------------------------------------------------------

class Board(HTMLParser):
    """What a radiator page shows: {build id: status} and {job id: (build, name, status)}."""

    def __init__(self, html):
        super().__init__()
        self.builds, self.jobs, self.scripts, self.handlers = {}, {}, [], []
        self.template_depth = 0
        self._build = None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "template":
            self.template_depth += 1
        if tag == "script":
            self.scripts.append(attrs)
        self.handlers += [name for name in attrs if name.startswith("on")]
        if self.template_depth:
            return
        if "data-build-id" in attrs:
            self._build = int(attrs["data-build-id"])
            self.builds[self._build] = attrs["data-status"]
        if "data-job-id" in attrs:
            self.jobs[int(attrs["data-job-id"])] = (self._build, attrs["data-job-name"],
                                                   attrs["data-status"])

    def handle_endtag(self, tag):
        if tag == "template":
            self.template_depth -= 1


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

def test_it_shows_recent_builds_and_their_jobs_to_anonymous_viewers(client, demo,
                                                                    django_assert_max_num_queries):
    alice = UserFactory(username="alice")
    passed = make_build(demo, "passed", [("lint", "passed"), ("unit", "passed")], user=alice)
    failed = make_build(demo, "failed", [("lint", "passed"), ("unit", "failed")],
                        branch="feature/broken")
    running = make_build(demo, "running", [("lint", "running"), ("unit", "queued")],
                         branch="feature/live")
    other = make_build(RepositoryFactory(name="other"), "passed", [("lint", "passed")])

    with django_assert_max_num_queries(4):
        response = client.get("/radiators/demo/")

    assert response.status_code == 200
    board = Board(response.content.decode())
    assert board.builds == {passed.pk: "passed", failed.pk: "failed", running.pk: "running"}
    assert other.pk not in board.builds
    jobs = {(build, name): status for build, name, status in board.jobs.values()}
    assert jobs == {
        (passed.pk, "lint"): "passed", (passed.pk, "unit"): "passed",
        (failed.pk, "lint"): "passed", (failed.pk, "unit"): "failed",
        (running.pk, "lint"): "running", (running.pk, "unit"): "queued",
    }
    # Newest first, and every status also written as a word (not colour alone).
    assert list(board.builds) == [running.pk, failed.pk, passed.pk]
    html = response.content.decode()
    assert "feature/broken" in html and "alice" in html and passed.sha[:7] in html
    for word in ("passed", "failed", "running", "queued"):
        assert f'data-part="job-status">{word}<' in html
    # Read-only: no forms, and the live part comes from a static script, data in attributes.
    assert "<form" not in html and "<button" not in html
    assert board.scripts == [{"src": "/static/radiators/radiator.js", "defer": None}]
    assert board.handlers == []
    assert 'data-snapshot-url="/radiators/demo/snapshot.json"' in html
    assert 'data-socket-path="/ws/radiators/demo/"' in html
    assert response["Cache-Control"].startswith("max-age=0")


def test_it_shows_only_the_most_recent_builds(client, demo):
    builds = [make_build(demo, "passed") for _ in range(RECENT_BUILDS + 3)]
    board = Board(client.get("/radiators/demo/").content.decode())
    assert list(board.builds) == [b.pk for b in reversed(builds)][:RECENT_BUILDS]


def test_it_says_so_when_there_are_no_builds(client, demo):
    html = client.get("/radiators/demo/").content.decode()
    assert "No builds yet" in html
    assert Board(html).builds == {}


def test_it_answers_404_for_an_unknown_repository(client, db):
    assert client.get("/radiators/nope/").status_code == 404
    assert client.get("/radiators/nope/snapshot.json").status_code == 404


def test_it_refuses_writes_over_http(client, demo):
    assert client.post("/radiators/demo/").status_code == 405
    assert client.post("/radiators/demo/snapshot.json").status_code == 405


# snapshot.json ---------------------------------------------------------------------------

def test_it_serves_a_snapshot_of_the_recent_builds_with_their_jobs(client, demo):
    alice = UserFactory(username="alice")
    older = make_build(demo, "failed", [("lint", "passed"), ("unit", "failed")], user=alice)
    newer = make_build(demo, "running", [("lint", "running")], branch="feature/live")
    make_build(RepositoryFactory(name="other"), "passed")

    response = client.get(reverse("radiators:snapshot", args=["demo"]))

    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert "no-cache" in response["Cache-Control"]
    data = response.json()
    assert data["repository"] == "demo"
    assert data["now"]
    assert [b["id"] for b in data["builds"]] == [newer.pk, older.pk]
    first, second = data["builds"]
    assert (first["branch"], first["status"], first["sha"]) == ("feature/live", "running",
                                                                newer.sha)
    assert first["url"] == f"/builds/{newer.pk}/"
    assert second["requested_by"] == "alice"
    assert [(j["name"], j["status"]) for j in second["jobs"]] == [("lint", "passed"),
                                                                 ("unit", "failed")]
    assert first["jobs"][0]["id"] == newer.jobs.get().pk


# The socket ------------------------------------------------------------------------------
# What the socket sends, and to whom, is in tests/test_wall_live.py.


@pytest.mark.parametrize("origin", [None, (b"origin", b"http://evil.example")])
@pytest.mark.django_db(transaction=True)
def test_it_refuses_sockets_from_other_sites(channel_layer, demo, origin):
    async def scenario():
        connected, _ = await socket("/ws/radiators/demo/", origin=origin).connect()
        assert not connected

    run(scenario)
