"""Websocket consumers: join a group, forward events. They never write the database."""

import re

from channels.generic.websocket import AsyncJsonWebsocketConsumer

from .events import ALL_GROUP, group_for

REPOSITORY_NAME = re.compile(r"^[-a-zA-Z0-9_]{1,100}$")


class RadiatorConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self):
        name = self.scope["url_route"]["kwargs"].get("repository")
        if name is None:
            self.group = ALL_GROUP
        elif REPOSITORY_NAME.match(name):
            self.group = group_for(name)
        else:
            await self.close(code=4404)
            return
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()

    async def disconnect(self, code):
        if getattr(self, "group", None):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive_json(self, content, **kwargs):
        # Read-only socket: mutations go through CSRF-protected POSTs.
        await self.send_json({"error": "this socket is read-only"})

    async def radiator_event(self, message):
        await self.send_json(message["event"])
