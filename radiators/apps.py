from django.apps import AppConfig


class RadiatorsConfig(AppConfig):
    name = "radiators"
    verbose_name = "Radiators"
