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


def serialize_event(event):
    data = {
        "id": event.pk,
        "kind": event.kind,
        "old": event.old,
        "new": event.new,
        "message": event.message,
        "created_at": event.created_at.isoformat(),
        "repository": event.repository.name if event.repository_id else None,
        "build_id": event.build_id,
        "job_id": event.job_id,
        "actor": event.actor.get_username() if event.actor_id else None,
        "data": event.data,
    }
    if event.job_id:
        data["job"] = {"id": event.job_id, "name": event.job.name, "status": event.job.status}
    if event.build_id:
        build = event.build
        data["build"] = {"id": build.pk, "status": build.status, "branch": build.branch,
                         "sha": build.sha}
    return data


def publish(event_id):
    """Send one Event to its repository's radiators and to the all-repositories group.

    A radiator that misses a message recovers from its snapshot, so a failure here is
    logged, never raised into the code that committed the change.
    """
    from pipeline.models import Event

    try:
        event = Event.objects.select_related("repository", "build", "job", "actor").get(
            pk=event_id
        )
        message = {"type": "radiator.event", "event": serialize_event(event)}
        layer = get_channel_layer()
        groups = [ALL_GROUP]
        if event.repository_id:
            groups.append(group_for(event.repository.name))
        _publisher().send(layer, groups, message)
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
