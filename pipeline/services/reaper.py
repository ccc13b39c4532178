"""The reaper (a beat task every 15 s): every run whose worker died, or that lost its task
in the broker, converges within about a minute.

- A running job beats every HEARTBEAT_SECONDS. Silent for HEARTBEAT_TIMEOUT means its
  worker died (killed, host gone): the job runs again (checks and deploys repeat safely)
  until JOB_ATTEMPTS, then ends in error with the reason. A deploy's Deployment record is
  ended and its node freed first. The killed worker's sandboxes died with it
  (bubblewrap's --die-with-parent).
- Queued builds and jobs whose task was lost (a broker restart, a server stopped in
  standalone) get a task again after a minute; duplicates are harmless (claims).
- A build that started but never queued its jobs (its worker died starting it) ends.
"""

import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from pipeline.models import Build, Job
from pipeline.services import builds
from pipeline.services.builds import BROKER_ERRORS, end_build, enqueue_jobs, finish_build_if_done
from pipeline.services.jobs import NODE_STAGES
from pipeline.statemachine import transition

logger = logging.getLogger(__name__)
REQUEUE_AFTER = timedelta(seconds=60)
QUEUED_BUILD_LIMIT = timedelta(hours=1)


def reap_stuck_runs(now=None):
    now = now or timezone.now()
    reaped = _rerun_silent_jobs(now)
    reaped += _end_builds_that_never_started(now)
    reaped += _requeue_lost_tasks(now)
    # Train builds are left to their trains (advanced below): not advanced twice a round.
    for build in (Build.objects.filter(status=Build.Status.RUNNING, jobs__isnull=False)
                  .exclude(kind=Build.Kind.TRAIN).distinct()):
        reaped += bool(finish_build_if_done(build.pk))
    # Trains waiting for a lock that expired, or whose advance task was lost, move on.
    from pipeline.services.trains import advance_active

    advance_active()
    return reaped


def _rerun_silent_jobs(now):
    limits = settings.TRAINYARD
    stale = now - timedelta(seconds=limits["HEARTBEAT_TIMEOUT"])
    silent = Job.objects.filter(status=Job.Status.RUNNING).filter(
        Q(heartbeat_at__lt=stale) | Q(heartbeat_at__isnull=True, started_at__lt=stale))
    reaped = 0
    for job in silent.select_related("build__repository"):
        reason = f"its worker stopped answering (no heartbeat for {limits['HEARTBEAT_TIMEOUT']}s)"
        reaped += _rerun_or_end(job, reason, now, limits["JOB_ATTEMPTS"])
    return reaped


def _rerun_or_end(job, reason, now, attempts):
    # Only if it is still as silent as we saw it: a beat since then means it lives. A
    # deploy's record and node are let go in the same transaction, never under a live one.
    still = {"attempt": job.attempt, "heartbeat_at": job.heartbeat_at}
    rerun = job.attempt < attempts
    with transaction.atomic():
        if rerun:
            moved = transition(job, Job.Status.QUEUED, where=still, attempt=job.attempt + 1,
                               started_at=None, heartbeat_at=None,
                               message=f"running it again: {reason}")
        else:
            moved = transition(job, Job.Status.ERROR, where=still, finished_at=now,
                               message=f"{reason}; gave up after {job.attempt} attempts")
        if moved and job.stage in NODE_STAGES:
            from nodes.services.deploys import recover_interrupted_deploy

            recover_interrupted_deploy(job, reason)
    if moved and rerun:
        enqueue_jobs([job.pk])
    elif moved:
        finish_build_if_done(job.build_id)
    return int(moved)


def _end_builds_that_never_started(now):
    """Starting a build only reads its spec (git, bounded by GIT_TIMEOUT)."""
    limit = now - timedelta(seconds=settings.TRAINYARD["GIT_TIMEOUT"] + 60)
    reaped = 0
    # A train's build may have no job for hours (awaiting approval): its train ends it.
    for build in Build.objects.filter(status=Build.Status.RUNNING, jobs__isnull=True,
                                      started_at__lt=limit).exclude(kind=Build.Kind.TRAIN):
        reaped += end_build(build, Build.Status.ERROR,
                            "the worker starting this build stopped; build it again")
    return reaped


def _requeue_lost_tasks(now, older_than=REQUEUE_AFTER):
    reaped = 0
    for build in Build.objects.filter(status=Build.Status.QUEUED,
                                      created_at__lt=now - QUEUED_BUILD_LIMIT):
        reaped += end_build(build, Build.Status.ERROR, "no worker picked this build up in an hour")
    cutoff = now - older_than
    for build_id in Build.objects.filter(status=Build.Status.QUEUED,
                                         created_at__lt=cutoff).values_list("pk", flat=True):
        try:
            builds._enqueue_build(build_id)
        except BROKER_ERRORS:
            logger.warning("broker away: build #%s waits for the next round", build_id)
            break
    lost = (Job.objects.filter(status=Job.Status.QUEUED, build__status=Build.Status.RUNNING)
            .filter(Q(enqueued_at__lt=cutoff) | Q(enqueued_at__isnull=True))
            .order_by("build_id", "id").values_list("pk", flat=True))
    enqueue_jobs(lost)
    return reaped


def requeue_everything_queued():
    """At a standalone start: the in-memory broker lost every task when the server stopped."""
    return _requeue_lost_tasks(timezone.now(), older_than=timedelta(0))
