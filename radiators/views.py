"""Wall pages: a server-rendered snapshot; the websocket carries changes.

Read-only and open to anonymous viewers (wall screens). The page and `snapshot.json`
show the same recent builds; the page's script re-renders from the snapshot whenever
an event names something it does not show yet, and after every reconnect.
"""

from django.http import Http404, JsonResponse
from django.shortcuts import get_object_or_404, render
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from pipeline.models import Repository
from pipeline.serializers import build_to_dict

RECENT_BUILDS = 12


def _recent_builds(repository):
    return list(repository.builds.select_related("repository", "requested_by")
                .prefetch_related("jobs")[:RECENT_BUILDS])


def render_wall(request, repository, *, kiosk=False):
    """A stand-in for the wall helper's page (live's branch only: its kiosk view and tests
    call this); the real one renders every panel, and no controls when `kiosk`."""
    if repository is None:
        raise Http404("the wall of all repositories has no page yet")
    return render(request, "radiators/radiator.html", {
        "repository": repository, "builds": _recent_builds(repository),
        "now": timezone.now(), "limit": RECENT_BUILDS, "kiosk": kiosk,
    })


@require_safe
@never_cache
def radiator(request, name):
    return render_wall(request, get_object_or_404(Repository, name=name))


@require_safe
@never_cache
def snapshot(request, name):
    repository = get_object_or_404(Repository, name=name)
    builds = [build_to_dict(b, jobs=list(b.jobs.all())) for b in _recent_builds(repository)]
    return JsonResponse({
        "repository": repository.name,
        "now": timezone.now().isoformat(),
        "builds": builds,
    })
