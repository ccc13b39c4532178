"""ASGI entry point: HTTP through Django, websockets through Channels."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pipeline.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from radiators.kiosk import SameOriginGate  # noqa: E402
from radiators.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        # Same origin as Django's CSRF check: this host (in ALLOWED_HOSTS) or a trusted origin.
        "websocket": SameOriginGate(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)
