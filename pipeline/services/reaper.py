"""Ends runs whose worker died: a job still running well past its own timeout can only
mean nobody is running it any more (the transport kills commands at their timeout)."""

from datetime import timedelta

from django.utils import timezone

from pipeline.models import Build, Job
from pipeline.services.builds import end_build, finish_build_if_done
from pipeline.statemachine import transition

GRACE = timedelta(minutes=2)
QUEUED_BUILD_LIMIT = timedelta(hours=1)


def reap_stuck_runs(now=None):
    now = now or timezone.now()
    reaped = 0
    for job in Job.objects.filter(status=Job.Status.RUNNING).select_related("build"):
        if job.started_at and job.started_at + timedelta(seconds=job.timeout) + GRACE < now:
            if transition(job, Job.Status.ERROR, finished_at=now,
                          message="the worker running this job stopped; it was reaped"):
                reaped += 1
                finish_build_if_done(job.build_id)
    stale = Build.objects.filter(status=Build.Status.QUEUED, created_at__lt=now - QUEUED_BUILD_LIMIT)
    for build in stale:
        reaped += end_build(build, Build.Status.ERROR, "no worker picked this build up in time")
    for build in Build.objects.filter(status=Build.Status.RUNNING, jobs__isnull=False).distinct():
        reaped += finish_build_if_done(build.pk)
    return reaped
