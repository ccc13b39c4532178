"""Wall pages: a server-rendered snapshot; the websocket carries changes."""

from django.http import JsonResponse
from django.shortcuts import get_object_or_404, render

from pipeline.models import Repository
from pipeline.serializers import build_to_dict

RECENT_BUILDS = 12


def _recent_builds(repository):
    return (repository.builds.select_related("repository", "requested_by")
            .prefetch_related("jobs")[:RECENT_BUILDS])


def radiator(request, name):
    repository = get_object_or_404(Repository, name=name)
    return render(request, "radiators/radiator.html", {
        "repository": repository, "builds": _recent_builds(repository),
    })


def snapshot(request, name):
    repository = get_object_or_404(Repository, name=name)
    builds = [build_to_dict(b, jobs=list(b.jobs.all())) for b in _recent_builds(repository)]
    return JsonResponse({"repository": repository.name, "builds": builds})
