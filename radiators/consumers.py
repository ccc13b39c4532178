"""Websocket consumers: join a group, forward events. They never write the database.

The socket is one-way: a radiator recovers its state from `snapshot.json` and the
socket only carries changes. Anything a client sends gets an error reply; mutations
are CSRF-protected POSTs that go through the services.
"""

import re

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from .events import ALL_GROUP, group_for

# Channels group names must be shorter than 100 characters: "radiator." + 90 is the most.
REPOSITORY_NAME = re.compile(r"^[-a-zA-Z0-9_]{1,90}$")

CLOSE_NOT_FOUND = 4404
READ_ONLY = {"error": "this socket is read-only"}


@database_sync_to_async
def _repository_exists(name):
    from pipeline.models import Repository

    return Repository.objects.filter(name=name).exists()


class RadiatorConsumer(AsyncJsonWebsocketConsumer):
    group = None

    async def connect(self):
        name = self.scope["url_route"]["kwargs"].get("repository")
        if name is None:
            group = ALL_GROUP
        elif REPOSITORY_NAME.match(name) and await _repository_exists(name):
            group = group_for(name)
        else:
            await self.close(code=CLOSE_NOT_FOUND)
            return
        await self.channel_layer.group_add(group, self.channel_name)
        self.group = group
        await self.accept()

    async def disconnect(self, code):
        if self.group:
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive(self, text_data=None, bytes_data=None, **kwargs):
        # Read-only: whatever arrives (JSON, text, binary) is neither parsed nor acted on.
        await self.send_json(READ_ONLY)

    async def radiator_event(self, message):
        await self.send_json(message["event"])
