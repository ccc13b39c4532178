"""The wall's websocket: a snapshot on connect, then the panels that changed, in order.

Messages (JSON text frames; `seq` goes up by exactly 1 per message on a socket):
    {"type": "snapshot", "seq", "version", "now", "panels": {every panel}}
    {"type": "panels",   "seq", "version", "now", "panels": {only the changed ones}}
The client may send only {"type": "resync"} (it saw a gap): it gets a fresh snapshot.
Anything else gets READ_ONLY back and changes nothing: the socket is read-only, and
actions are CSRF-protected POSTs that go through the services.

Before anything is sent: the Origin must be this server's (radiators.kiosk.SameOriginGate
refuses others at the handshake, in pipeline/asgi.py), the viewer must be allowed
(radiators.kiosk.socket_viewer) and the wall must exist. Those refusals are close codes
sent after accepting, so the page can tell them from a server that is away.

The consumer has no channel of its own on the layer: its wall's hub (radiators.hub)
listens once for all the screens of the process and hands each message over through
`offer`, already encoded.
"""

import asyncio
import json
import logging
import re

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from .frames import DirectSocket
from .hub import hub_for
from .kiosk import CLOSE_NOT_FOUND, Refused, socket_viewer

logger = logging.getLogger(__name__)

# Channels group names must be shorter than 100 characters: "radiator." + 90 is the most.
REPOSITORY_NAME = re.compile(r"^[-a-zA-Z0-9_]{1,90}$")

READ_ONLY = json.dumps({"type": "error", "error": "this socket is read-only"})
CLOSE_SERVER_ERROR = 1011


@database_sync_to_async
def _admit(scope, name):
    """(viewer, repository or None) for this socket, or raise Refused."""
    from pipeline.models import Repository

    repository = None
    if name is not None:
        repository = (Repository.objects.filter(name=name).first()
                      if REPOSITORY_NAME.match(name) else None)
        if repository is None:
            raise Refused(CLOSE_NOT_FOUND, f"no repository {name!r}")
    viewer = socket_viewer(scope)
    if not viewer.may_watch(repository):
        # A kiosk token for another wall: as if there were no such wall for it.
        raise Refused(CLOSE_NOT_FOUND, "this kiosk token is for another wall")
    return viewer, repository


class RadiatorConsumer(AsyncWebsocketConsumer):
    # No per-socket channel on the layer (an unknown alias gives none): the hub listens.
    channel_layer_alias = "radiators.hub-listens-instead"

    hub = None
    kiosk_token_id = None
    _sending = False
    _behind = False
    _closed = False
    _send_task = None
    _socket = None

    async def connect(self):
        await self.accept()
        self._socket = DirectSocket.under(self.base_send)  # after accept: extensions known
        name = self.scope["url_route"]["kwargs"].get("repository")
        try:
            viewer, repository = await _admit(self.scope, name)
        except Refused as refused:
            return await self.close_now(refused.code)
        self.kiosk_token_id = viewer.kiosk_token.pk if viewer.kiosk_token else None
        hub = hub_for(repository.name if repository is not None else None)
        try:
            await hub.join(self)
        except Exception:
            logger.exception("could not start the wall of %s", name or "all repositories")
            return await self.close_now(CLOSE_SERVER_ERROR)
        self.hub = hub

    async def disconnect(self, code):
        self._closed = True
        if self.hub is not None:
            self.hub.leave(self)

    async def receive(self, text_data=None, bytes_data=None):
        try:
            message = json.loads(text_data) if text_data is not None and len(text_data) < 100 else None
        except ValueError:
            message = None
        if message == {"type": "resync"} and self.hub is not None:
            self.offer(self.hub.snapshot_text())
        else:
            self.offer(READ_ONLY)

    async def close_now(self, code):
        self._closed = True
        await self.close(code=code)

    # Called by the hub (in the event loop, never awaited) ---------------------------------

    def offer(self, text, frame=None):
        """Send `text` now unless the last send is still waiting on a slow client: then
        this one is skipped and the client gets a fresh snapshot once it can write.
        `frame`: `text` already framed (radiators.frames), written as it is when it can."""
        if self._closed:
            return
        if self._sending:
            self._behind = True
            return
        if frame is not None and self._socket is not None and self._socket.write(frame):
            return
        self._sending = True
        self._send_task = run_eagerly(self._send_text(text))

    def close_for(self, code):
        if not self._closed:
            self._closed = True
            asyncio.get_running_loop().create_task(self.close(code=code))

    async def _send_text(self, text):
        try:
            await self.base_send({"type": "websocket.send", "text": text})
        except Exception:  # the client is gone: its disconnect follows
            self._closed = True
        finally:
            self._sending = False
            self._send_task = None
        if self._behind and self.hub is not None:
            self._behind = False
            self.offer(self.hub.snapshot_text())


# Writing to a thousand sockets without a thousand tasks ---------------------------------
#
# A websocket send completes at once unless the client's buffer is full. Wrapping every
# send in a task would cost a task per socket per message; asyncio's eager tasks (which
# run a coroutine until its first real wait) only arrive in Python 3.12. This does the same.

def run_eagerly(coroutine):
    """Run `coroutine` now up to its first wait; only if it waits, finish it in a task.
    Returns the task, or None when it already finished."""
    try:
        waiting_on = coroutine.send(None)
    except StopIteration:
        return None
    return asyncio.ensure_future(_finish(_Continue(coroutine, waiting_on)))


async def _finish(rest):
    return await rest


class _Continue:
    """Awaiting this resumes a started coroutine: it hands the future the coroutine is
    waiting on to the task, and the task's results (or cancellation) back in."""

    def __init__(self, coroutine, waiting_on):
        self.coroutine, self.waiting_on = coroutine, waiting_on

    def __await__(self):
        coroutine, waiting_on = self.coroutine, self.waiting_on
        while True:
            try:
                value = yield waiting_on
            except BaseException as exc:  # noqa: B036  (cancellation goes in, too)
                try:
                    waiting_on = coroutine.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    waiting_on = coroutine.send(value)
                except StopIteration as stop:
                    return stop.value
