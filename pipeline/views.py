"""Web pages. Thin: read models for display; mutations are POSTs through chat-ops."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db.models import Max
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from pipeline import chatops, permissions
from pipeline.models import Build, PullRequest, Repository
from pipeline.services import git, pulls


def home(request):
    return render(request, "pipeline/home.html", {
        "repositories": Repository.objects.all(),
        "builds": Build.objects.select_related("repository", "requested_by")[:20],
    })


def repository(request, name):
    repo = get_object_or_404(Repository, name=name)
    return render(request, "pipeline/repository.html", {
        "repository": repo,
        "builds": repo.builds.select_related("requested_by").prefetch_related("jobs")[:30],
        "branches": git.known_branches(repo),
        "pull_requests": repo.pull_requests.filter(state=PullRequest.State.OPEN),
        "can_build": permissions.can(request.user, "build"),
        "can_open": permissions.can(request.user, "open_pull_request"),
    })


@login_required
@require_POST
def open_pull_request(request, name):
    repo = get_object_or_404(Repository, name=name)
    try:
        permissions.require(request.user, "open_pull_request")
        pr, created = pulls.open_pull_request(
            repo, request.POST.get("branch", "").strip(),
            title=request.POST.get("title", "").strip()[:300], user=request.user)
    except (pulls.PullRequestError, PermissionDenied) as exc:
        messages.error(request, str(exc))
        return redirect(repo)
    messages.success(request, f"{'Opened' if created else 'Already open:'} #{pr.number}")
    return redirect(pr)


def pull_request(request, name, number):
    pr = get_object_or_404(PullRequest.objects.select_related("repository"),
                           repository__name=name, number=number)
    builds = pr.repository.builds.filter(branch=pr.branch).select_related("requested_by")[:20]
    return render(request, "pipeline/pull_request.html", {
        "pr": pr, "builds": builds, "can_build": permissions.can(request.user, "build"),
        "can_close": permissions.can(request.user, "close_pull_request"),
    })


@login_required
@require_POST
def close_pull_request(request, name, number):
    pr = get_object_or_404(PullRequest, repository__name=name, number=number)
    try:
        permissions.require(request.user, "close_pull_request")
    except PermissionDenied as exc:
        messages.error(request, str(exc))
        return redirect(pr)
    pulls.close_pull_request(pr, reason=f"closed by {request.user.get_username()}",
                             user=request.user)
    return redirect(pr)


@login_required
@require_POST
def request_build(request, name):
    repo = get_object_or_404(Repository, name=name)
    branch = request.POST.get("branch", "").strip()
    try:
        outcome = chatops.run(repo, "bb", [branch], user=request.user, via="web")
    except (chatops.CommandError, PermissionDenied) as exc:
        messages.error(request, str(exc))
        return redirect(repo)
    messages.success(request, outcome.message)
    return redirect(outcome.build)


def build(request, build_id):
    item = get_object_or_404(
        Build.objects.select_related("repository", "commit", "requested_by"), pk=build_id
    )
    jobs = item.jobs.annotate(last_seq=Max("log_chunks__seq")).prefetch_related(
        "log_chunks", "test_results")
    return render(request, "pipeline/build.html", {"build": item, "jobs": jobs})
