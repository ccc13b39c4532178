"""Celery tasks: take a primary key, call one service. Running one twice is harmless:
each service claims its row with a status transition first."""

from celery import shared_task
from django.conf import settings

from pipeline.services import builds, jobs, pulls, reaper, trains


@shared_task(acks_late=True, soft_time_limit=600, time_limit=660)
def run_build(build_id):
    builds.start_build(build_id)


# The job's own timeout is enforced by the transport; the Celery limit is a backstop.
@shared_task(acks_late=True, time_limit=settings.TRAINYARD["MAX_JOB_TIMEOUT"] + 900)
def run_job(job_id):
    jobs.run_job(job_id)


@shared_task(time_limit=120)
def reap_stuck_runs():
    reaper.reap_stuck_runs()


@shared_task(time_limit=60)
def dispatch_waiting_deploys():
    builds.dispatch_waiting_deploys()


# Each fetch stops after GIT_SYNC_TIMEOUT; the Celery limit is a backstop.
@shared_task(time_limit=300)
def sync_pull_requests():
    """Harmless to run twice: a tick that overlaps a running sync returns at once."""
    pulls.sync_local_repositories()


@shared_task(time_limit=300)
def advance_train(train_id):
    trains.advance(train_id)


@shared_task(time_limit=300)
def train_tick(repository_id):
    """The schedule's tick (a django-celery-beat PeriodicTask per repository)."""
    from pipeline.models import Repository

    repository = Repository.objects.filter(pk=repository_id).first()
    if repository is not None:
        result = trains.tick(repository)
        return result if isinstance(result, str) else f"started train #{result.pk}"
    return "no such repository"


@shared_task(time_limit=120)
def remind_train_authors():
    trains.remind_authors()
