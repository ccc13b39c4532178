"""An in-process channel layer that is safe to publish to from worker threads.

Channels' InMemoryChannelLayer keeps asyncio queues bound to the server's event loop; a
Celery worker thread publishing through `async_to_sync` runs on another loop, and its
messages may sit unseen until something else wakes the server. This layer hands sends
from a foreign loop over to the server's loop. Standalone only: production uses
channels-redis.
"""

import asyncio

from channels.layers import InMemoryChannelLayer


class ThreadSafeInMemoryChannelLayer(InMemoryChannelLayer):
    _home_loop = None

    def _remember_loop(self):
        loop = asyncio.get_running_loop()
        if self._home_loop is None or self._home_loop.is_closed():
            self._home_loop = loop

    def _foreign(self):
        home = self._home_loop
        return (home is not None and not home.is_closed() and home.is_running()
                and home is not asyncio.get_running_loop())

    async def _on_home(self, coroutine):
        future = asyncio.run_coroutine_threadsafe(coroutine, self._home_loop)
        return await asyncio.wrap_future(future)

    async def receive(self, channel):
        self._remember_loop()
        return await super().receive(channel)

    async def group_add(self, group, channel):
        self._remember_loop()
        return await super().group_add(group, channel)

    async def send(self, channel, message):
        if self._foreign():
            return await self._on_home(super().send(channel, message))
        return await super().send(channel, message)

    async def group_send(self, group, message):
        if self._foreign():
            return await self._on_home(super().group_send(group, message))
        return await super().group_send(group, message)
