"""The one place that tells the walls something changed. Called after commit, never before.

A message says only *which* wall changed, and the kind of change: each web process's hub
(radiators.hub) then reads the wall once, whatever the number of screens (only the panels
that kind of change can touch), and sends what differs. So the message is small, and a
lost or late one costs nothing the next full read (a heartbeat) does not heal.
"""

import asyncio
import logging
import os
import threading

from channels.layers import get_channel_layer

logger = logging.getLogger(__name__)

ALL_GROUP = "radiator.all"
SEND_TIMEOUT = 5.0

# Message types on the layer (the hub's handlers).
CHANGED = "radiator.changed"
KIOSK_REVOKED = "radiator.kiosk_revoked"


def group_for(repository_name):
    """The layer group of one repository's wall; None: the wall of all repositories."""
    return ALL_GROUP if repository_name is None else f"radiator.{repository_name}"


def publish(event_id, *, kind, repository_id, on_train, repository_name=None):
    """Tell the walls of an Event's repository, and the all-repositories wall, to refresh.

    The kind and whether it concerns a train come with the message: the hubs re-read only
    the panels such a change can touch. The repository's name (its walls' group) is read
    unless the caller had it at hand. A wall that misses a message catches up on its next
    heartbeat, so a failure here is logged, never raised into the code that committed
    the change.
    """
    from pipeline.models import Repository

    try:
        if repository_name is None and repository_id is not None:
            repository_name = (Repository.objects.filter(pk=repository_id)
                               .values_list("name", flat=True).first())
        send_to_walls(repository_name,
                      {"type": CHANGED, "event": event_id, "kind": kind, "train": on_train})
    except Exception:
        logger.exception("could not publish event %s", event_id)


def wall_changed(repository_name=None):
    """For changes that record no Event (a wall's layout, say): refresh the walls now."""
    try:
        send_to_walls(repository_name, {"type": CHANGED, "event": None, "kind": "wall",
                                        "train": False})
    except Exception:
        logger.exception("could not tell the walls of %s", repository_name or "all repositories")


def send_to_walls(repository_name, message, *, only_that_wall=False):
    """Send `message` to a repository's wall and (unless `only_that_wall`) the wall of all
    repositories; repository_name None: the wall of all repositories only."""
    groups = [group_for(repository_name)]
    if repository_name is not None and not only_that_wall:
        groups.append(ALL_GROUP)
    _publisher().send(get_channel_layer(), groups, message)


class _Publisher:
    """One event loop, in a thread of its own, for every publish of this process.

    `async_to_sync` from a worker thread starts a thread and an event loop per call (and
    channels-redis a connection per loop): a build publishes dozens of events, and that
    was an eighth of the worker's CPU per build. Sends still wait for their result, so
    messages leave in the order they were recorded."""

    def __init__(self):
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="radiator-publisher",
                         daemon=True).start()

    def send(self, layer, groups, message):
        future = asyncio.run_coroutine_threadsafe(_send(layer, groups, message), self.loop)
        try:
            future.result(SEND_TIMEOUT)
        except TimeoutError:
            future.cancel()
            raise


_PUBLISHER = None
_PUBLISHER_LOCK = threading.Lock()


def _publisher():
    global _PUBLISHER
    with _PUBLISHER_LOCK:
        # A forked worker process inherits the object but not its thread: start its own.
        if _PUBLISHER is None or _PUBLISHER.pid != os.getpid():
            _PUBLISHER = _Publisher()
        return _PUBLISHER


async def _send(layer, groups, message):
    for group in groups:
        await layer.group_send(group, message)
