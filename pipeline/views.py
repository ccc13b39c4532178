"""Web pages. Thin: read models for display; mutations are POSTs through chat-ops."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import Case, Count, Max, Value, When
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.dateparse import parse_datetime
from django.views.decorators.http import require_POST

from pipeline import chatops, permissions
from pipeline.models import Build, DeployTrain, Job, PullRequest, Repository, TestResult
from pipeline.services import git, merge, pulls, trains

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
        # What trains.current_train answers (the active train, else the latest), read here
        # for display in one query.
        "train": repo.trains.active().first() or repo.trains.first(),
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


# Deploy trains --------------------------------------------------------------------------
#
# Pages show `trains.status(train)`, the dict every door shows; each button is a POST
# through `chatops.run`, which checks the permission. Force and rollback ask first, on a
# page of their own (no script: the Content-Security-Policy allows none inline).

TONES = {  # a status word -> the badge colour it wears
    "passed": {"deployed", "passed", "good", "healthy", "succeeded", "done"},
    "failed": {"failed", "vetoed", "bad", "unhealthy", "error"},
    "running": {"deploying_lower", "testing", "deploying_production", "deploying", "running"},
    "cancelled": {"cancelled", "skipped", "rolled_back"},
}


def tone(status):
    return next((name for name, words in TONES.items() if status in words), "queued")


def _command(request, repo, name, args, train=None):
    """Run a chat-ops command for a button; the outcome, or None with the refusal shown."""
    try:
        outcome = chatops.run(repo, name, args, user=request.user, via="web", train=train)
    except (chatops.CommandError, PermissionDenied) as exc:
        messages.error(request, str(exc))
        return None
    messages.success(request, outcome.message)
    return outcome


def _train_or_404(name, train_id):
    return get_object_or_404(DeployTrain.objects.select_related("repository"),
                             repository__name=name, pk=train_id)


def _open_locks(repo):
    return repo.locks.filter(released_at__isnull=True).select_related("locked_by")


def train_list(request, name):
    repo = get_object_or_404(Repository, name=name)
    recent = list(repo.trains.select_related("started_by")[:50])
    for item in recent:
        item.tone = tone(item.status)
    return render(request, "pipeline/trains.html", {
        "repository": repo, "trains": recent, "locks": _open_locks(repo),
        "environments": chatops.LOCKABLE,
        "can_start": permissions.can(request.user, "start_train"),
        "can_lock": permissions.can(request.user, "lock"),
        "can_rollback": permissions.can(request.user, "rollback"),
    })


def train(request, name, train_id):
    item = _train_or_404(name, train_id)
    data = _for_display(item, trains.status(item))
    username = request.user.get_username() if request.user.is_authenticated else None
    mine = next((a for a in data["authors"] if a["username"] == username), None)
    release_manager = permissions.can(request.user, "force")
    return render(request, "pipeline/train.html", {
        "train": item, "status": data, "my_answer": mine,
        # The service's rule: its authors or a release manager answer an active train.
        "can_answer": item.is_active and permissions.can(request.user, "approve")
        and (mine is not None or release_manager),
        "can_force": release_manager and (item.is_active or item.status == item.Status.VETOED),
        "can_rollback": permissions.can(request.user, "rollback"),
    })


def _for_display(train, data):
    """The status dict with what a template cannot work out: badge tones, times as times,
    links to pull requests and acceptance jobs."""
    data = {**data, "tone": tone(data["status"])}
    for key in ("created_at", "finished_at"):
        data[key] = _when(data.get(key))
    for env in [*data["environments"], data["production"]]:
        env["tone"] = tone(env.get("status"))
        for node in env["nodes"]:
            node["tone"] = tone(node.get("health"))
        env["deploy_job"] = env.get("deploy") or env.get("job")  # production has a "job"
        env.setdefault("acceptance", None)
        for job in (env["acceptance"], env["deploy_job"]):
            if job:
                job["tone"] = tone(job.get("status"))
                job["url"] = job.get("url") or _job_url(job.get("id"))
    for author in [*data["authors"], *data.get("other_answers", [])]:
        author["tone"] = tone(author["answer"])
        author["answered_at"] = _when(author.get("answered_at"))
    for commit in data["commits"]:
        commit["pull_url"] = _pull_url(train.repository, commit.get("pull_request"))
    if data.get("lock"):
        data["lock"] = {**data["lock"], "expires_at": _when(data["lock"].get("expires_at"))}
    return data


def _when(value):
    return parse_datetime(value) if isinstance(value, str) else value


def _job_url(job_id):
    build_id = Job.objects.filter(pk=job_id).values_list("build_id", flat=True).first() \
        if job_id else None
    return f"{reverse('pipeline:build', args=[build_id])}#job-{job_id}" if build_id else ""


def _pull_url(repo, pull):
    """A commit's pull request as the status dict gives it: a number, or a dict with one."""
    number = pull.get("number") if isinstance(pull, dict) else pull
    return reverse("pipeline:pull_request", args=[repo.name, number]) if number else ""


@login_required
@require_POST
def start_train(request, name):
    repo = get_object_or_404(Repository, name=name)
    outcome = _command(request, repo, "train", [])
    return redirect(outcome.train if outcome else reverse("pipeline:trains", args=[repo.name]))


@login_required
@require_POST
def approve_train(request, name, train_id):
    item = _train_or_404(name, train_id)
    _command(request, item.repository, "good", [], train=item)
    return redirect(item)


@login_required
@require_POST
def veto_train(request, name, train_id):
    item = _train_or_404(name, train_id)
    reason = request.POST.get("reason", "").strip()
    if not reason:
        messages.error(request, "A veto needs a reason: say what is wrong, for the authors "
                                "and the release managers.")
    else:
        _command(request, item.repository, "bad", [reason], train=item)
    return redirect(item)


@login_required
def force_train(request, name, train_id):
    """GET: what forcing means, and the form that confirms it. POST with `confirmed`: force."""
    item = _train_or_404(name, train_id)
    permissions.require(request.user, "force")
    reason = request.POST.get("reason", "").strip()
    if request.method == "POST" and request.POST.get("confirmed") == "yes" and reason:
        flags = [f"--{flag}" for flag in ("override-veto", "override-lock")
                 if request.POST.get(flag)]
        if _command(request, item.repository, "force", [*flags, "--", reason], train=item):
            return redirect(item)
    elif request.method == "POST":
        messages.error(request, "Forcing needs a reason and your confirmation.")
    return render(request, "pipeline/train_force.html", {
        "train": item, "status": _for_display(item, trains.status(item)), "reason": reason})


@login_required
def rollback(request, name):
    """GET: what a rollback does, and the form that confirms it. POST with `confirmed`."""
    repo = get_object_or_404(Repository, name=name)
    permissions.require(request.user, "rollback")
    reason = request.POST.get("reason", "").strip()
    if request.method == "POST" and request.POST.get("confirmed") == "yes" and reason:
        outcome = _command(request, repo, "rollback", [reason])
        if outcome:
            return redirect(outcome.train)
    elif request.method == "POST":
        messages.error(request, "A rollback needs a reason and your confirmation.")
    production = repo.trains.filter(status=DeployTrain.Status.DEPLOYED).first()
    return render(request, "pipeline/rollback.html", {
        "repository": repo, "production": production, "reason": reason})


@login_required
@require_POST
def lock(request, name):
    repo = get_object_or_404(Repository, name=name)
    args = ["--environment", request.POST.get("environment", "")]
    if request.POST.get("expires", "").strip():
        args += ["--expires", request.POST["expires"]]
    _command(request, repo, "lock", [*args, "--", request.POST.get("reason", "")])
    return redirect("pipeline:trains", repo.name)


@login_required
@require_POST
def unlock(request, name):
    repo = get_object_or_404(Repository, name=name)
    _command(request, repo, "unlock", ["--environment", request.POST.get("environment", "")])
    return redirect("pipeline:trains", repo.name)


@login_required
def inbox(request):
    """The user's notifications, newest first; seeing them marks them read."""
    from pipeline.services.notifications import read_inbox

    notes, unread = read_inbox(request.user)
    return render(request, "pipeline/inbox.html", {"notifications": notes, "unread": unread})
