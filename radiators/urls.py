from django.urls import path

from . import views

app_name = "radiators"

urlpatterns = [
    path("<slug:name>/", views.radiator, name="radiator"),
    path("<slug:name>/snapshot.json", views.snapshot, name="snapshot"),
]
