from django.urls import path

from . import kiosk, views

app_name = "radiators"

urlpatterns = [
    path("kiosk/<str:token>/", kiosk.kiosk_wall, name="kiosk"),
    path("<slug:name>/", views.radiator, name="radiator"),
    path("<slug:name>/snapshot.json", views.snapshot, name="snapshot"),
]
