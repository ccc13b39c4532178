"""One hub per wall per web process: the wall is read once, whatever the number of screens.

A hub subscribes once to its wall's group on the channel layer. A message there only
marks the wall dirty, with the panels its kind of change can touch (`panels_changed_by`):
the hub reads those panels (`wall_snapshot`, in a thread: the ORM is sync) at most once
per COALESCE_SECONDS, compares them with the last ones, encodes the changed panels once
and writes that same text to every screen (radiators.frames: framed once, too). A burst of 200 events is
one or two reads, and the last read always follows the last commit (events are published
after commit), so the final state always arrives.

Sequence numbers belong to the hub: every screen of a hub gets every message, so a
screen that joins (or asks to resync) gets a snapshot carrying the hub's current number
and counts on from there. A screen that cannot keep up (its writes are still pending when
the next message is due) skips messages and, once it can write again, gets a fresh
snapshot rather than a backlog.

The hub also re-reads the whole wall every HEARTBEAT_SECONDS: screens of a quiet wall hear
from it (a "panels" message, perhaps with no panel in it), time-dependent panels move on,
and a change whose message the layer lost is picked up anyway.

Screens are consumers (radiators.consumers.RadiatorConsumer) with `offer(text, frame)`,
`kiosk_token_id` and `close_for(code)`.
"""

import asyncio
import json
import logging
import weakref
from concurrent.futures import ThreadPoolExecutor

from channels.layers import get_channel_layer
from django.conf import settings
from django.utils import timezone

from .events import CHANGED, KIOSK_REVOKED, group_for
from .frames import text_frame
from .kiosk import CLOSE_REVOKED
from .snapshot import panels_changed_by

logger = logging.getLogger(__name__)

COALESCE_SECONDS = 0.1
HEARTBEAT_SECONDS = 10.0
LAYER_RETRY_SECONDS = (0.5, 5.0)  # first and longest wait before re-subscribing


# The ORM is sync; the hubs of a process share a few threads (and their connections).
_READER = ThreadPoolExecutor(max_workers=2, thread_name_prefix="radiator-hub")


def heartbeat_seconds():
    return float(settings.TRAINYARD.get("WALL_HEARTBEAT_SECONDS", HEARTBEAT_SECONDS))


class WallState:
    """One read of a wall: each panel encoded once, ready to be put into messages. A read
    of some panels keeps the others of `base` (the read before) as they were."""

    def __init__(self, snapshot, base=None, repository=None):
        self.repository = repository  # as read with the whole wall; partial reads reuse it
        self.version = snapshot["version"]
        self.version_json = json.dumps(self.version)
        self.now_json = json.dumps(snapshot["now"])
        self.panels = dict(base.panels) if base is not None else {}
        self.panels.update({name: json.dumps(data, separators=(",", ":"), sort_keys=True)
                            for name, data in snapshot["panels"].items()})

    def changed_since(self, before):
        """{name: encoded panel} of what differs from `before`; a panel gone is null."""
        if before is None:
            return dict(self.panels)
        changed = {name: text for name, text in self.panels.items()
                   if before.panels.get(name) != text}
        changed.update({name: "null" for name in before.panels if name not in self.panels})
        return changed


def encode(kind, seq, state, panels, now_json=None):
    """A socket message as text, built from already-encoded panels (no re-encoding)."""
    body = ",".join(f"{json.dumps(name)}:{text}" for name, text in panels.items())
    return (f'{{"type":"{kind}","seq":{seq},"version":{state.version_json},'
            f'"now":{now_json or state.now_json},"panels":{{{body}}}}}')


def _read_wall(repository_name, kiosk_ids, panels=None, base=None):
    """In a reader thread: the wall's state (only `panels` re-read, the others kept from
    `base`; None: all of them), and which of `kiosk_ids` are revoked now."""
    from django.db import close_old_connections

    from pipeline.models import Repository

    from .kiosk import revoked_among
    from .snapshot import wall_snapshot

    close_old_connections()
    try:
        partial = panels is not None and base is not None
        repository = base.repository if partial else None
        if repository is None and repository_name is not None:
            # Read with the whole wall only: a change to the repository or its layout is
            # not a build's or job's event, so it makes the next read a whole one.
            repository = Repository.objects.select_related("wall_layout").get(
                name=repository_name)
        snapshot = wall_snapshot(repository, panels)
        state = WallState(snapshot, base if partial else None, repository)
        return state, revoked_among(kiosk_ids)
    finally:
        close_old_connections()


class Hub:
    def __init__(self, repository_name, loop):
        self.repository_name = repository_name
        self.group = group_for(repository_name)
        self.loop = loop
        self.screens = set()
        self.seq = 0
        self.state = None
        self.ready = loop.create_future()
        self._joining = 0
        self._dirty = asyncio.Event()
        self._wanted = None  # the panels the next read re-reads; None: all of them
        self._tasks = []
        self._channel = None
        self._layer = None

    # Screens ---------------------------------------------------------------------------

    async def join(self, screen):
        """Add a screen; it gets the current snapshot before any later message."""
        if not self._tasks:
            self._start()
        self._joining += 1
        try:
            await asyncio.shield(self.ready)  # the first read (raises if it failed)
        finally:
            self._joining -= 1
        self.screens.add(screen)
        screen.offer(self.snapshot_text())

    def leave(self, screen):
        self.screens.discard(screen)
        if not self.screens and not self._joining:
            _forget(self)
            self._stop()

    def snapshot_text(self):
        """The whole wall at the hub's current number (a new screen, a resync, a laggard)."""
        now = json.dumps(timezone.now().isoformat())
        return encode("snapshot", self.seq, self.state, self.state.panels, now)

    def _broadcast(self, text):
        frame = text_frame(text)  # once for every screen that can take it as it is
        for screen in list(self.screens):
            screen.offer(text, frame)

    # Reading the wall ------------------------------------------------------------------

    def _start(self):
        self._tasks = [self.loop.create_task(self._listen(), name=f"hub-listen {self.group}"),
                       self.loop.create_task(self._refresh_loop(), name=f"hub-read {self.group}")]

    def _stop(self):
        for task in self._tasks:
            task.cancel()
        self._tasks = []
        if self._channel is not None:
            layer, channel = self._layer, self._channel
            self._channel = None
            # Leave the group in the background: the last screen is already gone.
            self.loop.create_task(_discard(layer, self.group, channel))
        if not self.ready.done():
            self.ready.cancel()

    async def _refresh_loop(self):
        first = True
        while True:
            if not first:
                try:
                    await asyncio.wait_for(self._dirty.wait(), heartbeat_seconds())
                except TimeoutError:
                    self._wanted = None  # a heartbeat: read everything
            self._dirty.clear()
            started = self.loop.time()
            try:
                await self._refresh()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.exception("could not read the wall of %s",
                                 self.repository_name or "all repositories")
                self._wanted = None  # what this read was for: with everything, next time
                if first:
                    self.ready.set_exception(exc)
                    _forget(self)
                    self._stop()
                    return
            if first:
                first = False
                self.ready.set_result(True)
            # At most one read per COALESCE_SECONDS: what arrives meanwhile waits for the next.
            await asyncio.sleep(max(0.0, started + COALESCE_SECONDS - self.loop.time()))

    async def _refresh(self):
        kiosk_ids = {s.kiosk_token_id for s in self.screens if s.kiosk_token_id}
        # What arrives from now on is for the next read (this one may not see it).
        panels, self._wanted = self._wanted, set()
        if self.state is None:
            panels = None
        state, revoked = await self.loop.run_in_executor(
            _READER, _read_wall, self.repository_name, kiosk_ids, panels, self.state)
        self._close_revoked(revoked)
        before, self.state = self.state, state
        if before is None:
            return  # the first read: screens get it as their snapshot on joining
        if before.version != state.version:
            changed = state.panels  # the screens reload; they might as well get everything
        else:
            changed = state.changed_since(before)
        self.seq += 1
        self._broadcast(encode("panels", self.seq, state, changed))

    def _close_revoked(self, token_ids):
        for screen in list(self.screens):
            if screen.kiosk_token_id in token_ids:
                self.screens.discard(screen)
                screen.close_for(CLOSE_REVOKED)

    # The channel layer -------------------------------------------------------------------

    async def _listen(self):
        """Subscribe to the wall's group; on a layer failure, wait and subscribe again (and
        re-read the wall, in case something happened meanwhile)."""
        retry = LAYER_RETRY_SECONDS[0]
        while True:
            try:
                self._layer = get_channel_layer()
                self._channel = await self._layer.new_channel("radiator-hub.")
                await self._layer.group_add(self.group, self._channel)
                retry = LAYER_RETRY_SECONDS[0]
                while True:
                    self._handle(await self._layer.receive(self._channel))
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("the wall of %s lost the channel layer; retrying in %.1f s",
                                 self.repository_name or "all repositories", retry)
                await asyncio.sleep(retry)
                retry = min(retry * 2, LAYER_RETRY_SECONDS[1])
                self._want(None)

    def _handle(self, message):
        kind = message.get("type")
        if kind == CHANGED:
            # No kind or train flag (an older publisher): every panel.
            self._want(panels_changed_by(message.get("kind") or "", message.get("train", True)))
        elif kind == KIOSK_REVOKED:
            self._close_revoked({message.get("token")})


    def _want(self, panels):
        """Read `panels` (None: all) at the next read, with whatever else is wanted."""
        if panels is None or self._wanted is None:
            self._wanted = None
        else:
            self._wanted |= panels
        self._dirty.set()


async def _discard(layer, group, channel):
    try:
        await layer.group_discard(group, channel)
    except Exception:
        logger.warning("could not leave %s", group, exc_info=True)


# One hub per wall and event loop (a test runs its own loop; a server has one) ---------

_HUBS = weakref.WeakKeyDictionary()


def hub_for(repository_name):
    loop = asyncio.get_running_loop()
    hubs = _HUBS.setdefault(loop, {})
    hub = hubs.get(repository_name)
    if hub is None:
        hub = hubs[repository_name] = Hub(repository_name, loop)
    return hub


def _forget(hub):
    hubs = _HUBS.get(hub.loop, {})
    if hubs.get(hub.repository_name) is hub:
        del hubs[hub.repository_name]
