"""What a wall shows, as plain data: the one source for the page, `snapshot.json` and
the live socket (which sends it whole on connect, then only the panels that changed).

Contract (the socket layer relies on it):

    wall_snapshot(repository=None) -> {
        "repository": name or None (None: the wall of all repositories),
        "version": the server's version (a new one makes open pages reload),
        "now": ISO time it was taken,
        "panels": {panel name: JSON-ready data},   # compared panel by panel
    }

Panels are replaced whole on the screen, so each is small and self-contained.
"""

from django.utils import timezone

from pipeline.models import Build
from pipeline.serializers import build_to_dict

RECENT_BUILDS = 12


def server_version():
    from django.conf import settings

    return getattr(settings, "TRAINYARD_VERSION", "dev")


def wall_snapshot(repository=None):
    builds = Build.objects.select_related("repository", "requested_by").prefetch_related("jobs")
    if repository is not None:
        builds = builds.filter(repository=repository)
    return {
        "repository": repository.name if repository is not None else None,
        "version": server_version(),
        "now": timezone.now().isoformat(),
        "panels": {
            "builds": [build_to_dict(b, jobs=list(b.jobs.all())) for b in builds[:RECENT_BUILDS]],
        },
    }
