"""A wall message is framed once and written as it is to every screen that negotiated no
extension; a screen with per-message deflate (or any other server) takes the ASGI send.
Against the real server: uvicorn's websockets-sansio protocol, as Trainyard runs it."""

import asyncio
import json

import pytest
import uvicorn
from django.db import transaction
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState
from websockets.asyncio.client import connect
from websockets.extensions.permessage_deflate import PerMessageDeflate

from pipeline.services.events import record_event
from radiators import frames
from radiators.frames import DirectSocket, text_frame
from tests.factories import BuildFactory, CommitFactory, RepositoryFactory


def test_a_text_frame_is_the_servers_unmasked_final_frame():
    frame = text_frame('{"a":"é"}')
    assert frame[0] == 0x81  # FIN, text
    assert frame[1] == len('{"a":"é"}'.encode())  # unmasked, short length
    assert frame[2:] == '{"a":"é"}'.encode()
    long = text_frame("x" * 300)
    assert long[1] == 126 and int.from_bytes(long[2:4], "big") == 300


def make_protocol():
    config = uvicorn.Config("pipeline.asgi:application", ws="websockets-sansio", lifespan="off")
    config.load()
    loop = asyncio.new_event_loop()
    try:
        return WebSocketsSansIOProtocol(config=config, server_state=ServerState(), app_state={},
                                        _loop=loop)
    finally:
        loop.close()


def test_only_uvicorns_own_send_on_a_socket_without_extensions_is_written_to_directly(db):
    protocol = make_protocol()
    assert isinstance(DirectSocket.under(protocol.send), DirectSocket)

    async def wrapped(message):  # a middleware's send around the server's
        await protocol.send(message)

    assert DirectSocket.under(wrapped) is None
    protocol.conn.extensions = [PerMessageDeflate(False, False, 12, 12)]
    assert DirectSocket.under(protocol.send) is None


class Transport:
    def __init__(self):
        self.written, self.closing = [], False

    def write(self, data):
        self.written.append(data)

    def is_closing(self):
        return self.closing


def test_a_write_that_would_wait_or_be_refused_is_left_to_the_asgi_send(db):
    from websockets.protocol import State

    protocol = make_protocol()
    protocol.transport = Transport()
    protocol.conn.state = State.OPEN
    socket = DirectSocket(protocol)
    assert socket.write(b"one") and protocol.transport.written == [b"one"]
    protocol.writable.clear()  # uvicorn paused writing: the client's buffer is full
    assert not socket.write(b"two")
    protocol.writable.set()
    protocol.transport.closing = True
    assert not socket.write(b"three")
    protocol.transport.closing = False
    protocol.close_sent = True
    assert not socket.write(b"four")
    assert protocol.transport.written == [b"one"]


@pytest.mark.django_db(transaction=True)
def test_screens_with_and_without_deflate_get_the_same_messages(asgi_server, monkeypatch):
    """The test server accepts per-message deflate: one screen negotiates it (the ASGI
    send), the other does not (the frame written as it is); both see the same message."""
    repository = RepositoryFactory(name="framed")
    direct = []
    real_write = frames.DirectSocket.write

    def counting_write(self, frame):
        written = real_write(self, frame)
        direct.append(written)
        return written

    monkeypatch.setattr(frames.DirectSocket, "write", counting_write)
    url = asgi_server.url.replace("http://", "ws://") + "/ws/radiators/framed/"

    async def scenario():
        async with connect(url, origin=asgi_server.url, compression=None) as plain, \
                connect(url, origin=asgi_server.url, compression="deflate") as deflated:
            assert deflated.protocol.extensions and not plain.protocol.extensions
            first = [json.loads(await ws.recv()) for ws in (plain, deflated)]
            assert [m["type"] for m in first] == ["snapshot", "snapshot"]

            def request():
                with transaction.atomic():
                    build = BuildFactory(commit=CommitFactory(repository=repository),
                                         branch="feature/framed")
                    record_event("build.requested", subject=build, new="queued")

            await asyncio.to_thread(request)
            seen = []
            for ws in (plain, deflated):
                while True:
                    message = json.loads(await asyncio.wait_for(ws.recv(), 10))
                    if "feature/framed" in json.dumps(message.get("panels")):
                        seen.append(message)
                        break
            return seen

    plain_message, deflated_message = asyncio.run(scenario())
    assert plain_message == deflated_message and plain_message["type"] == "panels"
    assert True in direct  # the plain screen's frames went out as built, once per message
