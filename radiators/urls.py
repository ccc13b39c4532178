from django.urls import path

from . import kiosk, views

app_name = "radiators"

urlpatterns = [
    path("", views.radiator_all, name="radiator_all"),
    path("snapshot.json", views.snapshot, name="snapshot_all"),
    path("kiosk/<str:token>/", kiosk.kiosk_wall, name="kiosk"),
    path("<slug:name>/", views.radiator, name="radiator"),
    path("<slug:name>/snapshot.json", views.snapshot, name="snapshot"),
    path("<slug:name>/command", views.command, name="command"),
    path("<slug:name>/claim", views.claim, name="claim"),
]
