"""Web pages. Thin: read models for display; mutations are POSTs through chat-ops."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import Case, Count, Max, Value, When
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from pipeline import chatops, permissions
from pipeline.models import Build, Job, PullRequest, Repository, TestResult
from pipeline.services import git, merge, pulls

# Per-test results a page shows at most, failing ones first: a report of 100,000 tests
# made a 7 MB build page that took 4.5 s (bench/build_page.py). The rest are a link away.
TESTS_SHOWN = 200
FAILING = [TestResult.Outcome.FAILED, TestResult.Outcome.ERROR]
OUTCOMES = [*FAILING, TestResult.Outcome.SKIPPED, TestResult.Outcome.PASSED]  # as summed up


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
        "can_lgtm": permissions.can(request.user, "lgtm"),
        "can_merge": permissions.can(request.user, "merge"),
        "lgtms": pr.counted_lgtms(), "merge_blockers": merge.merge_blockers(pr),
    })


@login_required
@require_POST
def lgtm_pull_request(request, name, number):
    pr = get_object_or_404(PullRequest.objects.select_related("repository"),
                           repository__name=name, number=number)
    try:
        permissions.require(request.user, "lgtm")
        pulls.give_lgtm(pr, request.user)
    except (PermissionDenied, pulls.PullRequestError) as exc:
        messages.error(request, str(exc))
    return redirect(pr)


@login_required
@require_POST
def merge_pull_request(request, name, number):
    pr = get_object_or_404(PullRequest.objects.select_related("repository"),
                           repository__name=name, number=number)
    try:
        permissions.require(request.user, "merge")
        merged, _ = merge.merge_pull_request(pr, user=request.user)
    except (PermissionDenied, merge.MergeRefused) as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"merged into {pr.repository.default_branch} as {merged[:10]}")
    return redirect(pr)


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
    jobs = list(item.jobs.annotate(last_seq=Max("log_chunks__seq")).prefetch_related("log_chunks"))
    counts = _test_counts(TestResult.objects.filter(job__build=item), by_job=True)
    for job in jobs:
        job.test_counts = counts.get(job.pk, [])
        job.test_total = sum(n for _, n in job.test_counts)
        job.tests_shown = _first_tests(job) if job.test_total else []
    return render(request, "pipeline/build.html", {"build": item, "jobs": jobs})


def job_tests(request, build_id, job_id):
    """All of a job's per-test results, failing ones first, a page at a time; `?outcome=`
    keeps one outcome (anything else: all of them)."""
    job = get_object_or_404(Job.objects.select_related("build__repository"),
                            pk=job_id, build_id=build_id)
    outcome = request.GET.get("outcome", "")
    results = job.test_results.order_by(
        Case(When(outcome__in=FAILING, then=Value(0)), default=Value(1)), "id")
    if outcome in OUTCOMES:
        results = results.filter(outcome=outcome)
    else:
        outcome = ""
    page = Paginator(results, TESTS_SHOWN).get_page(request.GET.get("page"))
    counts = _test_counts(job.test_results.all())
    return render(request, "pipeline/job_tests.html", {
        "build": job.build, "job": job, "page": page, "outcome": outcome,
        "counts": counts, "total": sum(n for _, n in counts),
    })


def _test_counts(results, by_job=False):
    """[(outcome, count)] in OUTCOMES order, only those present; by_job: {job id: that}."""
    rows = results.values_list("job_id", "outcome").annotate(n=Count("id")).order_by()
    found = {}
    for job_id, outcome, n in rows:
        found.setdefault(job_id, {})[outcome] = n
    ordered = {job_id: [(o, per[o]) for o in OUTCOMES if o in per] for job_id, per in found.items()}
    return ordered if by_job else next(iter(ordered.values()), [])


def _first_tests(job):
    """Up to TESTS_SHOWN results: every failing one that fits, then the rest in report order.
    Two bounded queries: never the whole report in memory."""
    failing = list(job.test_results.filter(outcome__in=FAILING)[:TESTS_SHOWN])
    room = TESTS_SHOWN - len(failing)
    return failing + (list(job.test_results.exclude(outcome__in=FAILING)[:room]) if room else [])


def train(request, name, train_id):
    # The page itself comes with the doors; until then, its data as JSON.
    from django.http import JsonResponse

    from pipeline.models import DeployTrain
    from pipeline.services import trains

    found = get_object_or_404(DeployTrain, repository__name=name, pk=train_id)
    return JsonResponse(trains.status(found))
