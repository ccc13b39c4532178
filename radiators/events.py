"""The one place that publishes to the radiators. Called after commit, never before."""

import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

logger = logging.getLogger(__name__)

ALL_GROUP = "radiator.all"


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
        async_to_sync(_send)(layer, groups, message)
    except Exception:
        logger.exception("could not publish event %s", event_id)


async def _send(layer, groups, message):
    for group in groups:
        await layer.group_send(group, message)
