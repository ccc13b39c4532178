"""ASGI entry point: HTTP through Django, websockets through Channels."""

import gc
import os

from django.core.asgi import get_asgi_application
from django.urls import get_resolver

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pipeline.settings")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from radiators.kiosk import SameOriginGate  # noqa: E402
from radiators.middleware import SocketAuthMiddlewareStack  # noqa: E402
from radiators.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        # Same origin as Django's CSRF check: this host (in ALLOWED_HOSTS) or a trusted origin.
        "websocket": SameOriginGate(SocketAuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)

# Load now what the first request or wall read would otherwise load on its way (the
# URLconf and its reverse map: 120 ms, which the first change on every open wall waited
# for).
get_resolver().reverse_dict  # noqa: B018  (a property that populates the resolver)

# The cyclic collector's full passes stop the server for as long as they take to visit
# every long-lived object: with a thousand wall screens open, 80-220 ms, which every
# screen's next message waited for, several times a minute. What is loaded by now lives as
# long as the process: out of those passes for good. And a full pass is considered every
# 1000 middle-generation passes instead of every 10 (Python's default), so it comes every
# few minutes rather than every few seconds; the young generations, where nearly all the
# garbage is, are collected as often as by default.
gc.freeze()
gc.set_threshold(700, 10, 1000)
