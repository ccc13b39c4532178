"""Run one job of a build: claim it within the limits, make its own checkout, run its
setup and command in a sandbox, store output as it comes, move the build on.

Running a job task twice is harmless: the claim is a status transition (one copy wins),
and every later transition is guarded by the job's attempt number, so a copy the reaper
gave up on cannot end the attempt that replaced it.
"""

import logging
import re
import time
from pathlib import Path

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, Q
from django.utils import timezone

from nodes.transports import TransportError
from pipeline import sandbox
from pipeline.models import Build, Job, Repository, TestResult
from pipeline.services import git, trash
from pipeline.services.builds import enqueue_jobs, finish_build_if_done
from pipeline.services.heartbeat import Heartbeat
from pipeline.services.junit import ReportError, parse_junit
from pipeline.services.logs import LogWriter, once_more_on_a_new_connection
from pipeline.services.runner import JobWorkspace, job_context, prepared, run_command
from pipeline.spec import Spec
from pipeline.statemachine import transition
from radiators.rollups import record_results

__all__ = ["LogWriter", "run_job", "expand_variables", "dispatch_waiting_jobs"]

logger = logging.getLogger(__name__)
_VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")
WAITING_PREFIX = "waiting: "
# Jobs that work on nodes, not in a sandbox: not counted against the check limits.
NODE_STAGES = ("deploy", "train_deploy", "production")


def expand_variables(argv, env):
    """`$NAME` and `${NAME}` in arguments take values from the job's environment (as a
    shell would), but the result is still an argument list: no shell ever runs."""
    return [_VARIABLE.sub(lambda m: env.get(m.group(1) or m.group(2), ""), arg) for arg in argv]


def run_job(job_id):
    """Claim a queued job, run it, store the outcome, move the build on."""
    with trash.job_running():
        return _run_job(job_id)


def _run_job(job_id):
    job = Job.objects.select_related("build__repository").filter(pk=job_id).first()
    if job is None:
        return None
    if job.stage == "deploy":
        from nodes.services.deploys import run_deploy_job

        return run_deploy_job(job)  # it claims, runs and ends the job itself
    if job.stage in ("train_deploy", "production"):
        from nodes.services.environments import run_train_job

        return run_train_job(job)
    if not claim_job(job):
        return None
    extra = None
    if job.stage == "smoke":
        extra = {"TARGET_URL": job.build.deploy_url}
    elif job.stage == "acceptance":
        extra = {"TARGET_URL": job.target_url, "TARGET_ENVIRONMENT": job.environment}
    workspace = JobWorkspace.for_job(job)
    try:
        with Heartbeat(job.pk, claimed=True):
            _guarded(job, _run_command_job, workspace, extra)
        finish_build_if_done(job.build_id)
        dispatch_waiting_jobs(job.build.repository_id)
    finally:
        # After the build moved on: its next stage need not wait for the deletion.
        workspace.remove()
    return job


def claim_job(job):
    """QUEUED -> RUNNING, unless the build or its repository already runs as many jobs as
    the limits allow: then the job stays queued, says why, and is dispatched again when a
    job of that repository ends. Claims of one repository are serialised on its row."""
    limits = settings.TRAINYARD
    with transaction.atomic():
        list(Repository.objects.select_for_update(no_key=True).filter(pk=job.build.repository_id)
             .values_list("pk", flat=True))
        if not Build.objects.filter(pk=job.build_id, status=Build.Status.RUNNING).exists():
            return transition(job, Job.Status.CANCELLED, finished_at=timezone.now(),
                              message="its build had already ended") and False
        running = (Job.objects.filter(status=Job.Status.RUNNING,
                                      build__repository_id=job.build.repository_id)
                   .exclude(stage__in=NODE_STAGES))
        counts = running.aggregate(build=Count("id", filter=Q(build_id=job.build_id)),
                                   repository=Count("id"))
        reason = ""
        if counts["build"] >= limits["JOBS_PER_BUILD"]:
            reason = (f"{limits['JOBS_PER_BUILD']} jobs of this build are running "
                      "(TRAINYARD_JOBS_PER_BUILD)")
        elif counts["repository"] >= limits["JOBS_PER_REPOSITORY"]:
            reason = (f"{limits['JOBS_PER_REPOSITORY']} jobs of {job.build.repository.name} are "
                      "running (TRAINYARD_JOBS_PER_REPOSITORY)")
        if reason:
            Job.objects.filter(pk=job.pk, status=Job.Status.QUEUED).update(
                message=WAITING_PREFIX + reason)
            return False
        now = timezone.now()
        return transition(job, Job.Status.RUNNING, started_at=now, heartbeat_at=now, message="")


def dispatch_waiting_jobs(repository_id):
    """Queue again the oldest jobs that waited for a free slot in this repository."""
    limit = settings.TRAINYARD["JOBS_PER_REPOSITORY"]
    waiting = (Job.objects.filter(status=Job.Status.QUEUED, build__repository_id=repository_id,
                                  build__status=Build.Status.RUNNING,
                                  message__startswith=WAITING_PREFIX)
               .exclude(stage__in=NODE_STAGES))
    # Every job that ends calls this, and usually nothing waits: one read says so.
    if not waiting.exists():
        return 0
    running = (Job.objects.filter(status=Job.Status.RUNNING, build__repository_id=repository_id)
               .exclude(stage__in=NODE_STAGES).count())
    if running >= limit:
        return 0
    # The waiting message is taken off in the same transaction as the pick (rows another
    # dispatcher holds are skipped), so each waiting job is sent once, not by every
    # dispatcher that saw it. A refused claim puts it back.
    with transaction.atomic():
        picked = list(waiting.select_for_update(skip_locked=True, of=("self",))
                      .order_by("build_id", "id").values_list("pk", flat=True)[: limit - running])
        Job.objects.filter(pk__in=picked).update(message="")
    enqueue_jobs(picked)
    return len(picked)


def _guarded(job, work, *args):
    """A bug in Trainyard must end the job in error, not leave it running forever."""
    try:
        return work(job, *args)
    except Exception as exc:
        logger.exception("job %s crashed", job.pk)
        connection.close_if_unusable_or_obsolete()
        message = f"Trainyard failed while running this job: {exc!r}"[:2000]
        once_more_on_a_new_connection(lambda: transition(
            job, Job.Status.ERROR, where={"attempt": job.attempt}, finished_at=timezone.now(),
            message=message))
        finish_build_if_done(job.build_id)
        return job


def _end(job, status, **fields):
    return transition(job, status, where={"attempt": job.attempt}, finished_at=timezone.now(),
                      **fields)


def _run_command_job(job, workspace, extra_env=None):
    spec = Spec.from_dict(job.build.spec)
    log = LogWriter(job)
    try:
        mode = sandbox.mode()
        workspace.create(job.build.repository, job.build.sha)
        ctx = job_context(job, spec, workspace, mode, extra_env)
        log = LogWriter(job, ctx.secrets)
        _run_in_context(job, spec, ctx, log)
    except (sandbox.SandboxUnavailable, TransportError, git.GitError, OSError) as exc:
        log.write(f"\n[trainyard: {exc}]\n")
        log.flush()
        _end(job, Job.Status.ERROR, message=str(exc)[:2000])


def _run_in_context(job, spec, ctx, log):
    deadline = time.monotonic() + job.timeout
    if warning := sandbox.warning(ctx.mode):
        log.write(f"[trainyard: {warning}]\n")
    if job.attempt > 1:
        log.write(f"[trainyard: attempt {job.attempt}: the worker of the last one stopped]\n")
    with prepared(ctx, spec, deadline=deadline, log=log) as failure:
        if failure:
            log.write(f"\n[trainyard: {failure}]\n")
            log.flush()
            _end(job, Job.Status.FAILED, message=failure[:2000])
            return
        log.write(f"$ {job.command_display}\n")
        result, message = run_command(ctx, job.command, timeout=deadline - time.monotonic(),
                                      log=log)
    log.write(f"\n[trainyard: {message} after {result.duration:.1f}s]\n")
    log.flush()
    _store_outcome(job, result, ctx.workspace.src, message)


def _store_outcome(job, result, workspace, message):
    once_more_on_a_new_connection(lambda: _store_outcome_once(job, result, workspace, message))


def _store_outcome_once(job, result, workspace, message):
    with transaction.atomic():
        if job.junit_path:
            message += _store_test_results(job, Path(workspace))
        _end(job, Job.Status.PASSED if result.ok else Job.Status.FAILED,
             exit_code=result.exit_code, message=message, output_bytes=result.output_bytes,
             output_truncated=result.truncated)


def _store_test_results(job, workspace):
    path = workspace / job.junit_path
    # The report comes from the checked code: a symlink must not make Trainyard read (and
    # show) a file of its own from outside the workspace.
    if not path.resolve().is_relative_to(workspace.resolve()) or not path.is_file():
        return f"; no JUnit report at {job.junit_path}"
    try:
        rows = parse_junit(path)
    except ReportError as exc:
        return f"; {exc}"
    record_results(job, rows)  # the wall's test-health rollups (radiators.rollups)
    TestResult.objects.filter(job=job).delete()  # an earlier attempt's, if any
    TestResult.objects.bulk_create(TestResult(job=job, **row) for row in rows)
    failed = sum(1 for row in rows if row["outcome"] in ("failed", "error"))
    return f"; {len(rows)} test{'' if len(rows) == 1 else 's'}, {failed} failed"
