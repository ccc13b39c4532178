"""The wall's socket against the real consumer, hub and channel layer (the in-process
layer by default, Redis pub/sub with REDIS_URL set): a snapshot first, then the panels
that changed with seq + 1; bursts coalesced to their final state; resync; read-only;
who is let in (Origin, session, kiosk token, TRAINYARD_WALLS_PUBLIC).

Events here are real: recorded with `record_event` / `transition` in a transaction and
published after commit, as a worker does.
"""

import asyncio
import copy
import json
from unittest import mock

import pytest
from asgiref.sync import async_to_sync
from asgiref.testing import ApplicationCommunicator
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings as django_settings
from django.db import transaction
from django.test import Client

from pipeline.asgi import application
from pipeline.models import Build, Event, Job
from pipeline.services.events import record_event, repository_name_at_hand
from pipeline.statemachine import transition
from radiators import hub as hub_module
from radiators import kiosk
from radiators.consumers import RadiatorConsumer
from tests.factories import BuildFactory, CommitFactory, JobFactory, RepositoryFactory, UserFactory
from tests.helpers import off_main_thread

pytestmark = pytest.mark.django_db(transaction=True)

ORIGIN = (b"origin", b"http://127.0.0.1")
HOST = (b"host", b"127.0.0.1")


class Socket(ApplicationCommunicator):
    """A websocket client talking to Trainyard's ASGI app in-process (channels.testing's
    communicator needs daphne, which Trainyard does not install). Keeps the test's
    database connection open, as Channels' own communicator does."""

    def __init__(self, path, headers=(ORIGIN, HOST), query=b""):
        super().__init__(application, {"type": "websocket", "path": path, "query_string": query,
                                       "headers": list(headers), "subprotocols": []})
        self.seq = None

    async def send_input(self, message):
        with mock.patch("channels.db.close_old_connections", lambda: None):
            return await super().send_input(message)

    async def receive_output(self, timeout=5):
        with mock.patch("channels.db.close_old_connections", lambda: None):
            return await super().receive_output(timeout)

    async def connect(self, timeout=5):
        """(True, first message) when let in; (False, close code) when refused."""
        await self.send_input({"type": "websocket.connect"})
        response = await self.receive_output(timeout)
        if response["type"] == "websocket.close":  # refused before the handshake
            return False, response.get("code", 1000)
        assert response["type"] == "websocket.accept"
        response = await self.receive_output(timeout)
        if response["type"] == "websocket.close":
            return False, response["code"]
        return True, json.loads(response["text"])

    async def message(self, timeout=5):
        response = await self.receive_output(timeout)
        assert response["type"] == "websocket.send", response
        return json.loads(response["text"])

    async def send_text(self, text):
        await self.send_input({"type": "websocket.receive", "text": text})

    async def close_code(self, timeout=5):
        response = await self.receive_output(timeout)
        assert response["type"] == "websocket.close", response
        return response["code"]

    async def disconnect(self, timeout=5):
        await self.send_input({"type": "websocket.disconnect", "code": 1000})
        await self.wait(timeout)


def run(scenario):
    """Run an async scenario in a thread of its own (with its own event loop)."""
    off_main_thread(async_to_sync(scenario))


@pytest.fixture(autouse=True)
def channel_layer(settings):
    """The configured layer, fresh for this test (assigning the setting drops Channels'
    cached layer); no heartbeats unless a test asks for them."""
    settings.CHANNEL_LAYERS = copy.deepcopy(settings.CHANNEL_LAYERS)
    settings.TRAINYARD = {**settings.TRAINYARD, "WALL_HEARTBEAT_SECONDS": 3600}
    return get_channel_layer()


@pytest.fixture
def demo(db):
    return RepositoryFactory(name="demo")


def statuses(panels, branch):
    """Every status the panels show for `branch` (in whichever panel and shape)."""
    found = set()

    def walk(value):
        if isinstance(value, dict):
            if value.get("branch") == branch and "status" in value:
                found.add(value["status"])
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(panels)
    return found


class Screen:
    """What a browser keeps: the panels, the last seq; checks every message's order."""

    def __init__(self, socket, snapshot):
        assert snapshot["type"] == "snapshot", snapshot
        self.socket, self.seq, self.panels = socket, snapshot["seq"], dict(snapshot["panels"])
        self.messages = 0

    async def next(self, timeout=5):
        message = await self.socket.message(timeout)
        assert message["type"] == "panels", message
        assert message["seq"] == self.seq + 1, (message["seq"], self.seq)
        assert message["version"] and message["now"]
        self.seq = message["seq"]
        self.panels.update(message["panels"])
        self.messages += 1
        return message

    async def until(self, condition, timeout=10):
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not condition(self.panels):
            await self.next(timeout=max(0.1, deadline - loop.time()))


def request(repository, branch):
    with transaction.atomic():
        build = BuildFactory(commit=CommitFactory(repository=repository), branch=branch)
        record_event("build.requested", subject=build, new="queued")
    return build


def start(build):
    return transition(Build.objects.get(pk=build.pk), Build.Status.RUNNING)


async def connect(path, **kwargs):
    socket = Socket(path, **kwargs)
    connected, first = await socket.connect()
    assert connected, first
    return socket, Screen(socket, first)


# What a screen is sent ------------------------------------------------------------------

def test_a_screen_gets_the_snapshot_then_each_change_with_the_next_seq(demo):
    shown = BuildFactory(commit=CommitFactory(repository=demo), branch="feature/shown")
    other = RepositoryFactory(name="other")

    async def scenario():
        socket, screen = await connect("/ws/radiators/demo/")
        everything, wall_of_all = await connect("/ws/radiators/")
        quiet, _ = await connect("/ws/radiators/other/")
        try:
            assert statuses(screen.panels, "feature/shown") == {"queued"}
            build = await database_sync_to_async(request)(demo, "feature/new")
            message = await screen.next()
            assert statuses(message["panels"], "feature/new") == {"queued"}
            assert await database_sync_to_async(start)(build)
            await screen.next()
            assert statuses(screen.panels, "feature/new") == {"running"}
            # The wall of all repositories hears of it too; the other repository's does not.
            await wall_of_all.until(lambda p: statuses(p, "feature/new") == {"running"})
            assert await quiet.receive_nothing(timeout=0.3)
            await database_sync_to_async(request)(other, "feature/elsewhere")
            assert (await quiet.message())["seq"] == 1
            assert await socket.receive_nothing(timeout=0.3)
        finally:
            for ws in (socket, everything, quiet):
                await ws.disconnect()

    run(scenario)
    assert shown.pk


def test_a_burst_is_coalesced_and_ends_at_its_final_state(demo):
    events = 200

    def burst():
        builds = [request(demo, f"burst-{n}") for n in range(events - 1)]
        start(builds[-1])  # the 200th event: the newest build runs
        return builds[-1]

    async def scenario():
        socket, screen = await connect("/ws/radiators/demo/")
        try:
            last = await database_sync_to_async(burst)()
            await screen.until(lambda p: statuses(p, last.branch) == {"running"}, timeout=30)
            assert screen.messages < events, "every event its own message: nothing coalesced"
            assert await socket.receive_nothing(timeout=0.5)  # and nothing after the end
        finally:
            await socket.disconnect()

    run(scenario)
    assert Event.objects.filter(repository=demo).count() == events


def test_the_wall_is_read_once_per_change_whatever_the_number_of_screens(demo):
    from radiators import snapshot

    reads = mock.Mock(wraps=snapshot.wall_snapshot)

    async def scenario():
        screens = [await connect("/ws/radiators/demo/") for _ in range(5)]
        try:
            await database_sync_to_async(request)(demo, "feature/once")
            for _, screen in screens:
                await screen.next()
            assert reads.call_count == 2  # the first screen's snapshot, then the change
            assert len({screen.seq for _, screen in screens}) == 1
        finally:
            for socket, _ in screens:
                await socket.disconnect()

    with mock.patch.object(snapshot, "wall_snapshot", reads):
        run(scenario)


def test_a_resync_sends_a_fresh_snapshot_at_the_current_seq(demo):
    async def scenario():
        socket, screen = await connect("/ws/radiators/demo/")
        try:
            await database_sync_to_async(request)(demo, "feature/a")
            await screen.next()
            await socket.send_text(json.dumps({"type": "resync"}))
            again = await socket.message()
            assert again["type"] == "snapshot"
            assert again["seq"] == screen.seq
            assert again["panels"] == screen.panels
            await database_sync_to_async(request)(demo, "feature/b")
            assert (await screen.next())["seq"] == again["seq"] + 1
        finally:
            await socket.disconnect()

    run(scenario)


def test_a_quiet_wall_still_hears_a_heartbeat(demo, settings):
    settings.TRAINYARD = {**settings.TRAINYARD, "WALL_HEARTBEAT_SECONDS": 0.3}

    async def scenario():
        socket, screen = await connect("/ws/radiators/demo/")
        try:
            first = await screen.next()
            second = await screen.next()
            assert first["panels"] == second["panels"] == {}  # nothing changed
            assert second["now"] > first["now"]
        finally:
            await socket.disconnect()

    run(scenario)


def test_nothing_a_client_sends_changes_anything(demo):
    build = BuildFactory(commit=CommitFactory(repository=demo), status="running")
    job = JobFactory(build=build, name="unit", status="queued")
    counts = (Build.objects.count(), Job.objects.count(), Event.objects.count())
    read_only = {"type": "error", "error": "this socket is read-only"}

    async def scenario():
        socket, screen = await connect("/ws/radiators/demo/")
        try:
            for text in ['{"command": "bb", "args": ["master"]}', "!bb master",
                         '{"type": "approve", "train": 1}', '{"type": "resync", "x": 1}',
                         "x" * 100_000]:
                await socket.send_text(text)
                assert await socket.message() == read_only
            await socket.send_input({"type": "websocket.receive", "bytes": b"\x00\x01"})
            assert await socket.message() == read_only
            assert await socket.receive_nothing(timeout=0.3)
            # Still open, still in order.
            assert await database_sync_to_async(
                lambda: transition(Job.objects.get(pk=job.pk), Job.Status.RUNNING))()
            await screen.next()
        finally:
            await socket.disconnect()

    run(scenario)
    assert (Build.objects.count(), Job.objects.count()) == counts[:2]
    assert Event.objects.count() == counts[2] + 1  # only the transition the test made


def test_a_screen_that_falls_behind_gets_a_snapshot_not_a_backlog():
    """A client whose writes block skips what comes meanwhile, then gets the current
    snapshot: the hub never queues messages for it."""
    sent, gate = [], None

    class Hub:
        seq = 7

        def snapshot_text(self):
            return f"snapshot {self.seq}"

    async def scenario():
        nonlocal gate
        gate = asyncio.Event()
        screen = RadiatorConsumer()
        screen.hub = Hub()

        async def base_send(message):
            if message["text"] == "panels 1":  # the client's buffer is full now
                await gate.wait()
            sent.append(message["text"])

        screen.base_send = base_send
        screen.offer("panels 1")
        for n in range(2, 6):
            screen.offer(f"panels {n}")  # skipped: the first write still waits
        assert sent == []
        gate.set()
        while len(sent) < 2:
            await asyncio.sleep(0.01)
        screen.offer("panels 8")
        assert sent == ["panels 1", "snapshot 7", "panels 8"]

    run(scenario)


# Who is let in ------------------------------------------------------------------------

@pytest.mark.parametrize("headers", [
    [HOST],                                                   # no Origin at all
    [(b"origin", b"http://evil.example"), HOST],               # another site
    [(b"origin", b"http://127.0.0.1:8001"), (b"host", b"127.0.0.1:8000")],  # another port
    [(b"origin", b"null"), HOST],                              # a sandboxed frame
])
def test_a_socket_from_another_origin_is_refused(demo, headers):
    async def scenario():
        connected, code = await Socket("/ws/radiators/demo/", headers=headers).connect()
        assert not connected
        assert code == kiosk.CLOSE_BAD_ORIGIN

    run(scenario)


def test_a_trusted_origin_is_let_in(demo, settings):
    settings.ALLOWED_HOSTS = ["wall.example.com"]
    settings.CSRF_TRUSTED_ORIGINS = ["https://wall.example.com"]

    async def scenario():
        headers = [(b"origin", b"https://wall.example.com"), (b"host", b"internal:8000")]
        socket = Socket("/ws/radiators/demo/", headers=headers)
        connected, first = await socket.connect()
        assert connected and first["type"] == "snapshot"
        await socket.disconnect()

    run(scenario)


@pytest.mark.parametrize("path", ["/ws/radiators/nope/", "/ws/radiators/bad name/",
                                  "/ws/radiators/" + "x" * 95 + "/"])
def test_an_unknown_wall_is_closed_as_not_found(demo, path):
    async def scenario():
        assert await Socket(path).connect() == (False, kiosk.CLOSE_NOT_FOUND)

    run(scenario)


def session_cookie(user):
    client = Client()
    client.force_login(user)
    return (b"cookie", f"{django_settings.SESSION_COOKIE_NAME}="
            f"{client.cookies[django_settings.SESSION_COOKIE_NAME].value}".encode())


def test_private_walls_refuse_anonymous_viewers_and_admit_signed_in_ones(demo, settings):
    settings.TRAINYARD = {**settings.TRAINYARD, "WALLS_PUBLIC": False}
    cookie = session_cookie(UserFactory(username="watcher"))

    async def scenario():
        assert await Socket("/ws/radiators/demo/").connect() == (False, kiosk.CLOSE_UNAUTHORIZED)
        assert await Socket("/ws/radiators/").connect() == (False, kiosk.CLOSE_UNAUTHORIZED)
        socket = Socket("/ws/radiators/demo/", headers=[ORIGIN, HOST, cookie])
        connected, first = await socket.connect()
        assert connected and first["type"] == "snapshot"
        await socket.disconnect()

    run(scenario)


def test_a_kiosk_token_opens_its_own_wall_only(demo, settings):
    settings.TRAINYARD = {**settings.TRAINYARD, "WALLS_PUBLIC": False}
    RepositoryFactory(name="other")
    _, raw = kiosk.issue(demo, "east wall")
    _, all_raw = kiosk.issue(None, "lobby")
    query = f"kiosk={raw}".encode()

    async def scenario():
        socket, screen = await connect("/ws/radiators/demo/", query=query)
        await database_sync_to_async(request)(demo, "feature/k")
        await screen.next()
        await socket.disconnect()
        for path in ("/ws/radiators/other/", "/ws/radiators/"):
            assert await Socket(path, query=query).connect() == (False, kiosk.CLOSE_NOT_FOUND)
        # The all-repositories token opens that wall, and no repository's.
        wall, _ = await connect("/ws/radiators/", query=f"kiosk={all_raw}".encode())
        await wall.disconnect()
        assert await Socket("/ws/radiators/demo/", query=f"kiosk={all_raw}".encode()).connect() \
            == (False, kiosk.CLOSE_NOT_FOUND)
        for bad in (b"kiosk=tyk_not-a-token", b"kiosk=", b"kiosk=" + raw[:-1].encode()):
            assert await Socket("/ws/radiators/demo/", query=bad).connect() == (
                False, kiosk.CLOSE_UNAUTHORIZED)

    run(scenario)


def test_revoking_a_token_closes_its_open_screens_and_refuses_new_ones(demo):
    token, raw = kiosk.issue(demo, "east wall")
    _, other_raw = kiosk.issue(demo, "west wall")

    async def scenario():
        east, _ = await connect("/ws/radiators/demo/", query=f"kiosk={raw}".encode())
        west, west_screen = await connect("/ws/radiators/demo/", query=f"kiosk={other_raw}".encode())
        viewer, viewer_screen = await connect("/ws/radiators/demo/")
        try:
            await database_sync_to_async(kiosk.revoke)(token)
            assert await east.close_code() == kiosk.CLOSE_REVOKED
            # The others stay open and live.
            await database_sync_to_async(request)(demo, "feature/after")
            await west_screen.next()
            await viewer_screen.next()
            assert await Socket("/ws/radiators/demo/", query=f"kiosk={raw}".encode()).connect() \
                == (False, kiosk.CLOSE_REVOKED)
        finally:
            for ws in (east, west, viewer):
                await ws.disconnect()

    run(scenario)


def test_a_revocation_whose_message_was_lost_closes_the_screen_at_the_next_heartbeat(
        demo, settings):
    settings.TRAINYARD = {**settings.TRAINYARD, "WALL_HEARTBEAT_SECONDS": 0.3}
    token, raw = kiosk.issue(demo, "east wall")

    async def scenario():
        east, _ = await connect("/ws/radiators/demo/", query=f"kiosk={raw}".encode())
        with mock.patch.object(kiosk, "send_to_walls"):  # the revocation's message is lost
            await database_sync_to_async(kiosk.revoke)(token)
        while True:
            response = await east.receive_output(timeout=5)
            if response["type"] == "websocket.close":
                assert response["code"] == kiosk.CLOSE_REVOKED
                break
        await east.disconnect()

    run(scenario)


def test_the_hub_goes_away_with_its_last_screen(demo):
    async def scenario():
        first, _ = await connect("/ws/radiators/demo/")
        second, _ = await connect("/ws/radiators/demo/")
        hub = hub_module.hub_for("demo")
        assert len(hub.screens) == 2
        await first.disconnect()
        assert hub_module.hub_for("demo") is hub
        await second.disconnect()
        assert hub_module.hub_for("demo") is not hub
        hub_module._forget(hub_module.hub_for("demo"))

    run(scenario)


def test_the_socket_stack_reads_the_session_and_passes_the_servers_send_through(demo):
    """Channels' SessionMiddleware wraps every send (to save sessions on HTTP responses);
    a wall sends each message to every screen, so the socket stack must not."""
    from radiators.middleware import SocketAuthMiddlewareStack

    user = UserFactory(username="reader")
    seen = {}

    async def consumer(scope, receive, send):
        seen["send"] = send
        seen["user"] = await database_sync_to_async(lambda: scope["user"].username)()

    async def server_send(message):
        pass

    async def receive():
        return {"type": "websocket.connect"}

    stack = SocketAuthMiddlewareStack(consumer)
    async_to_sync(stack)({"type": "websocket", "headers": [session_cookie(user)]}, receive,
                         server_send)
    assert seen == {"send": server_send, "user": "reader"}
    async_to_sync(stack)({"type": "websocket", "headers": []}, receive, server_send)
    assert seen["user"] == ""  # no cookie: the anonymous user


def test_a_change_re_reads_only_the_panels_its_kind_can_touch(demo):
    """A build riding no train: the branch tiles and the builds. A lock (or a node, a
    train, anything else): every panel. The first read is of everything, too."""
    from radiators import snapshot

    reads = mock.Mock(wraps=snapshot.wall_snapshot)

    def locked():
        with transaction.atomic():
            record_event("lock.created", subject=demo, message="staging: hold")

    async def scenario():
        socket, screen = await connect("/ws/radiators/demo/")
        try:
            await database_sync_to_async(request)(demo, "feature/part")
            message = await screen.next()
            assert "feature/part" in json.dumps(message["panels"]["builds"])
            assert reads.call_args.args[1] == {"branches", "builds"}
            await database_sync_to_async(locked)()
            await screen.next()
            assert reads.call_args.args[1] is None
        finally:
            await socket.disconnect()

    with mock.patch.object(snapshot, "wall_snapshot", reads):
        run(scenario)
    assert reads.call_args_list[0].args[1] is None  # the first read: the whole wall


def test_an_event_names_its_wall_without_a_query_when_its_repository_is_loaded(
        demo, django_assert_num_queries):
    """A worker's job comes with its build and repository: its events name the wall from
    them. Otherwise the name is read when publishing, so a renamed repository's events go
    to its new wall at once."""
    from radiators import events

    build = BuildFactory(repository=demo, commit=CommitFactory(repository=demo))
    job = Job.objects.select_related("build__repository").get(pk=JobFactory(build=build).pk)
    sent = []
    with mock.patch.object(events, "send_to_walls", lambda name, message: sent.append(name)):
        with django_assert_num_queries(0):
            events.publish(1, kind="job.status", repository_id=demo.pk, on_train=False,
                           repository_name=repository_name_at_hand(job))
        type(demo).objects.filter(pk=demo.pk).update(name="renamed")
        bare_job = Job.objects.get(pk=job.pk)
        assert repository_name_at_hand(bare_job) is None
        events.publish(2, kind="job.status", repository_id=demo.pk, on_train=False,
                       repository_name=repository_name_at_hand(bare_job))
    assert sent == ["demo", "renamed"]
