"""The websocket stack: the cookies, the session (read, never written) and the user."""

from importlib import import_module

from channels.auth import AuthMiddleware
from channels.sessions import CookieMiddleware
from django.conf import settings


class SocketSessionMiddleware:
    """scope["session"] from the session cookie, as Channels' SessionMiddleware gives it,
    without that middleware's wrapper around every send. The wrapper saves the session
    and sets its cookie on HTTP responses, which a socket never sends; on a wall, where
    every message goes to every screen, it was a fifth of the cost of each send."""

    def __init__(self, inner):
        self.inner = inner
        self.session_store = import_module(settings.SESSION_ENGINE).SessionStore

    async def __call__(self, scope, receive, send):
        if "cookies" not in scope:
            raise ValueError("SocketSessionMiddleware needs CookieMiddleware above it")
        key = scope["cookies"].get(settings.SESSION_COOKIE_NAME)
        scope = dict(scope, session=self.session_store(key))  # loaded lazily, on first use
        return await self.inner(scope, receive, send)


def SocketAuthMiddlewareStack(inner):
    """Channels' AuthMiddlewareStack for sockets: scope["user"] from the session."""
    return CookieMiddleware(SocketSessionMiddleware(AuthMiddleware(inner)))
