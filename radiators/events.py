"""The one place that publishes to the radiators. Called after commit, never before."""

import asyncio
import logging
import os
import threading

from channels.layers import get_channel_layer

logger = logging.getLogger(__name__)

ALL_GROUP = "radiator.all"
SEND_TIMEOUT = 5.0


def group_for(repository_name):
    return f"radiator.{repository_name}"


# One query of plain columns: a select_related of four tables (and the build's spec, a
# JSON blob) cost more CPU than anything else in publishing.
_COLUMNS = ("id", "kind", "old", "new", "message", "created_at", "build_id", "job_id", "data",
            "repository__name", "actor__username", "job__name", "job__status",
            "build__status", "build__branch", "build__sha")


def serialize_event(row):
    """The radiator message for one Event, from a `values(*_COLUMNS)` row."""
    data = {
        "id": row["id"],
        "kind": row["kind"],
        "old": row["old"],
        "new": row["new"],
        "message": row["message"],
        "created_at": row["created_at"].isoformat(),
        "repository": row["repository__name"],
        "build_id": row["build_id"],
        "job_id": row["job_id"],
        "actor": row["actor__username"],
        "data": row["data"],
    }
    if row["job_id"]:
        data["job"] = {"id": row["job_id"], "name": row["job__name"], "status": row["job__status"]}
    if row["build_id"]:
        data["build"] = {"id": row["build_id"], "status": row["build__status"],
                         "branch": row["build__branch"], "sha": row["build__sha"]}
    return data


def publish(event_id):
    """Send one Event to its repository's radiators and to the all-repositories group.

    A radiator that misses a message recovers from its snapshot, so a failure here is
    logged, never raised into the code that committed the change.
    """
    from pipeline.models import Event

    try:
        row = Event.objects.filter(pk=event_id).values(*_COLUMNS).first()
        if row is None:
            return
        message = {"type": "radiator.event", "event": serialize_event(row)}
        groups = [ALL_GROUP]
        if row["repository__name"]:
            groups.append(group_for(row["repository__name"]))
        _publisher().send(get_channel_layer(), groups, message)
    except Exception:
        logger.exception("could not publish event %s", event_id)


class _Publisher:
    """One event loop, in a thread of its own, for every publish of this process.

    `async_to_sync` from a worker thread starts a thread and an event loop per call (and
    channels-redis a connection per loop): a build publishes dozens of events, and that
    was an eighth of the worker's CPU per build. Sends still wait for their result, so
    events leave in the order they were recorded."""

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
