"""Builds: request one for a branch, start it, and end it when its jobs are done."""

import logging

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from kombu.exceptions import OperationalError

from pipeline.models import Build, Commit, Job
from pipeline.services import git
from pipeline.services.events import record_event
from pipeline.spec import SpecError, parse_spec
from pipeline.statemachine import transition

logger = logging.getLogger(__name__)
# What publishing a task raises when the broker is away (kombu wraps redis-py's errors).
BROKER_ERRORS = (OperationalError, ConnectionError, OSError)


class BuildRequestError(ValueError):
    """The request cannot become a build; the message says why, for the person asking."""


class QueueUnavailable(BuildRequestError):
    """The task broker did not take the build: nothing is left half-made (the build ended
    in error saying so), and the request can be tried again."""


def record_commit(repository, sha):
    commit = Commit.objects.filter(repository=repository, sha=sha).first()
    if commit:
        return commit
    info = git.commit_info(repository, sha)
    message = info["message"]
    try:
        with transaction.atomic():
            return Commit.objects.create(
                repository=repository, sha=sha, author_name=info["author_name"][:200],
                author_email=info["author_email"][:254],
                committed_at=parse_datetime(info["committed_at"]), message=message,
                is_revert=message.startswith("Revert "))
    except IntegrityError:
        return Commit.objects.get(repository=repository, sha=sha)  # recorded meanwhile


def request_build(repository, branch, *, user=None, via="web"):
    """Queue a build of `branch`'s head. Returns (build, created).

    A build of the same SHA that is already queued or running is returned instead of
    starting a second one.
    """
    try:
        sha = git.resolve_branch(repository, branch)
        commit = record_commit(repository, sha)
    except git.InvalidRef as exc:
        raise BuildRequestError(str(exc)) from exc
    except git.GitError as exc:
        raise BuildRequestError(f"cannot read {repository.name}: {exc}") from exc
    from pipeline.services.pulls import record_push

    record_push(repository, branch, sha)
    # The default branch is checked again but never parked on a branch node (DESIGN).
    kind = Build.Kind.MASTER if branch == repository.default_branch else Build.Kind.BRANCH
    existing = Build.objects.active().filter(repository=repository, sha=sha, kind=kind)
    if found := existing.first():
        return found, False
    try:
        with transaction.atomic():
            build = Build.objects.create(
                repository=repository, commit=commit, sha=sha, branch=branch,
                kind=kind, requested_by=user if user and user.pk else None,
                requested_via=via,
            )
            who = user.get_username() if user and user.pk else "someone"
            record_event("build.requested", subject=build, new=Build.Status.QUEUED, actor=user,
                         message=f"{who} asked to build {branch} at {sha[:10]}")
            transaction.on_commit(lambda: _enqueue_new_build(build))
    except IntegrityError:
        # Another request for this SHA won the race: share its build.
        return existing.get(), False
    return build, True


def _enqueue_new_build(build):
    try:
        _enqueue_build(build.pk)
    except BROKER_ERRORS as exc:
        logger.warning("could not queue build #%s: %r", build.pk, exc)
        end_build(build, Build.Status.ERROR, "could not be queued: the task broker is unreachable")
        raise QueueUnavailable("the task broker is unreachable: nothing was queued; try again "
                               "in a moment") from exc


def _enqueue_build(build_id):
    from pipeline.tasks import run_build

    run_build.delay(build_id)


def _enqueue_jobs(job_ids):
    from pipeline.tasks import run_job

    for job_id in job_ids:
        run_job.delay(job_id)


def enqueue_jobs(job_ids):
    """Send a task per job and note when. A broker that is away loses nothing: the reaper
    sends tasks again for jobs queued longer than a minute."""
    job_ids = list(job_ids)
    if not job_ids:
        return
    Job.objects.filter(pk__in=job_ids).update(enqueued_at=timezone.now())
    try:
        _enqueue_jobs(job_ids)
    except BROKER_ERRORS:
        logger.warning("could not queue jobs %s; the reaper will", job_ids, exc_info=True)


def start_build(build_id):
    """Claim a queued build, read its spec on this host and queue one job per check. Each
    job makes its own checkout wherever it runs (nothing here is left on this host)."""
    build = Build.objects.select_related("repository").filter(pk=build_id).first()
    if build is None or not transition(build, Build.Status.RUNNING, started_at=timezone.now()):
        return None
    try:
        spec = _read_spec(build)
    except (SpecError, git.GitError, git.InvalidRef) as exc:
        end_build(build, Build.Status.ERROR, str(exc))
        return build
    except Exception as exc:
        # Whatever happens, the build ends: a build left running would refuse every retry.
        logger.exception("build #%s crashed while starting", build.pk)
        end_build(build, Build.Status.ERROR, f"Trainyard failed while starting this build: {exc!r}")
        return build
    with transaction.atomic():
        build.spec = spec.to_dict()
        Build.objects.filter(pk=build.pk).update(spec=build.spec)
        _queue_stage(build, Stage.CHECKS, spec)
    return build


class Stage:
    CHECKS = "checks"
    DEPLOY = "deploy"
    SMOKE = "smoke"


def _stage_jobs(build, stage, spec):
    """(name, argv, junit, timeout) for each job of a stage."""
    default_timeout = settings.TRAINYARD["CHECK_TIMEOUT"]
    if stage == Stage.CHECKS:
        return [(name, c.argv, c.junit, c.timeout or default_timeout)
                for name, c in spec.checks.items()]
    if stage == Stage.DEPLOY:
        return [("deploy", [], "", settings.TRAINYARD["DEPLOY_TIMEOUT"])]
    return [("smoke", spec.smoke.argv, spec.smoke.junit, spec.smoke.timeout or default_timeout)]


def _queue_stage(build, stage, spec):
    jobs = Job.objects.bulk_create(
        Job(build=build, name=name, stage=stage, command=argv, junit_path=junit, timeout=timeout)
        for name, argv, junit, timeout in _stage_jobs(build, stage, spec))
    job_ids = [job.pk for job in jobs]
    transaction.on_commit(lambda: enqueue_jobs(job_ids))


def _next_stage(build, done, spec):
    """Branch builds go on to a branch node and its smoke tests when the spec says how."""
    from nodes.services.allocation import has_branch_pool

    if build.kind != Build.Kind.BRANCH:
        return None
    if Stage.DEPLOY not in done and Stage.SMOKE not in done:
        return Stage.DEPLOY if spec.deploy and has_branch_pool(build.repository_id) else None
    if Stage.SMOKE not in done and Stage.DEPLOY in done and spec.smoke:
        return Stage.SMOKE
    return None


def _read_spec(build):
    path = build.repository.spec_path
    text = git.read_file(build.repository, build.sha, path)  # fetched if this host lacks it
    if text is None:
        raise SpecError(f"there is no {path} at {build.sha[:10]}")
    return parse_spec(text)


def finish_build_if_done(build_id):
    """Once none of a build's jobs is active: queue its next stage, or end it.

    Safe to call from every job: the unique job name per build lets one caller queue a
    stage, and the status transition lets one caller end the build.
    """
    # Every job that ends asks; while others still run, this one read is the answer.
    rows = list(Job.objects.filter(build_id=build_id, build__status=Build.Status.RUNNING)
                .values_list("stage", "status"))
    statuses = {status for _, status in rows}
    if not statuses or statuses & Job.ACTIVE:
        return False
    build = Build.objects.filter(pk=build_id, status=Build.Status.RUNNING).first()
    if build is None:
        return False
    if build.kind == Build.Kind.TRAIN:
        # A train's build ends with its train, which decides what comes next.
        from pipeline.services.trains import advance

        if build.train_id:
            advance(build.train_id)
        return False
    if statuses == {Job.Status.PASSED} and build.spec:
        from pipeline.spec import Spec

        spec = Spec.from_dict(build.spec)
        stage = _next_stage(build, {s for s, _ in rows}, spec)
        if stage:
            try:
                with transaction.atomic():
                    _queue_stage(build, stage, spec)
            except IntegrityError:
                pass  # another finishing job queued it
            return False
    if Job.Status.ERROR in statuses:
        outcome, message = Build.Status.ERROR, "a job could not run"
    elif Job.Status.FAILED in statuses:
        failed = build.jobs.filter(status=Job.Status.FAILED).values_list("name", flat=True)
        outcome, message = Build.Status.FAILED, f"{', '.join(failed)} failed"  # shown after "failed"
    elif Job.Status.CANCELLED in statuses:
        outcome, message = Build.Status.CANCELLED, "its jobs were cancelled"
    else:
        outcome, message = Build.Status.PASSED, "all checks passed"
    return end_build(build, outcome, message)


def end_build(build, outcome, message):
    from nodes.services.allocation import release_node

    # One transaction: nobody sees an ended build that still holds its node.
    with transaction.atomic():
        ended = transition(build, outcome, finished_at=timezone.now(), message=message)
        if ended:
            release_node(build)
            _record_candidate(build, outcome)
            if outcome == Build.Status.PASSED:
                from radiators.claims import release_when_green

                release_when_green(build)
            transaction.on_commit(dispatch_waiting_deploys)
    return ended


def _record_candidate(build, outcome):
    """A green master build makes its SHA a release candidate; a red one never does. Only
    the build's own ending gets here (the transition above), so this is the one writer."""
    from pipeline.models import ReleaseCandidate

    if build.kind != Build.Kind.MASTER or outcome != Build.Status.PASSED:
        return
    candidate, created = ReleaseCandidate.objects.get_or_create(
        repository_id=build.repository_id, sha=build.sha, defaults={"build": build})
    if created:
        record_event("release_candidate.created", subject=build, new="candidate",
                     message=f"{build.sha[:10]} passed its master build: a release candidate")
        from pipeline.services.train_schedule import ensure_schedule

        ensure_schedule(build.repository, (build.spec or {}).get("train_schedule"))


def dispatch_waiting_deploys():
    """Give the oldest builds waiting for a branch node another try (a node may be free).

    Only deploys that found no node say so in their message: a deploy queued a moment ago
    has its own task on the way, and sending it another (every build that ends did) only
    made a second claim find it taken."""
    from nodes.services.deploys import WAITING_FOR_NODE

    waiting = (Job.objects.filter(stage=Stage.DEPLOY, status=Job.Status.QUEUED,
                                  build__status=Build.Status.RUNNING,
                                  message__startswith=WAITING_FOR_NODE)
               .order_by("build_id").values_list("pk", flat=True))
    enqueue_jobs(waiting)
