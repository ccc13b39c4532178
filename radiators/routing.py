from django.urls import path

from .consumers import RadiatorConsumer

websocket_urlpatterns = [
    path("ws/radiators/", RadiatorConsumer.as_asgi()),
    path("ws/radiators/<str:repository>/", RadiatorConsumer.as_asgi()),
]
