"""The one writer of statuses, the database constraints behind it, and the reaper."""

from datetime import timedelta

import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone

from pipeline.models import Build, Event, Job
from pipeline.services.builds import request_build
from pipeline.services.reaper import reap_stuck_runs
from pipeline.statemachine import InvalidTransition, transition
from tests.factories import BuildFactory, JobFactory
from tests.helpers import race


@pytest.mark.django_db
def test_it_moves_along_allowed_transitions_and_records_an_event(developer):
    build = BuildFactory()
    assert transition(build, Build.Status.RUNNING, actor=developer, started_at=timezone.now())
    assert Build.objects.get(pk=build.pk).status == "running"
    event = Event.objects.get(build=build, kind="build.status")
    assert (event.old, event.new, event.actor) == ("queued", "running", developer)


@pytest.mark.django_db
def test_it_refuses_moves_the_state_machine_does_not_allow():
    build = BuildFactory(status=Build.Status.PASSED)
    assert not transition(build, Build.Status.RUNNING)
    assert Build.objects.get(pk=build.pk).status == "passed"
    with pytest.raises(InvalidTransition):
        transition(build, "exploded")
    with pytest.raises(InvalidTransition):
        transition(build, Build.Status.QUEUED)  # nothing moves back to queued


@pytest.mark.django_db
def test_the_database_refuses_an_unknown_status():
    build = BuildFactory()
    with pytest.raises(IntegrityError), transaction.atomic():
        Build.objects.filter(pk=build.pk).update(status="bogus")


@pytest.mark.django_db
def test_the_database_refuses_two_active_builds_of_one_sha():
    build = BuildFactory()
    with pytest.raises(IntegrityError), transaction.atomic():
        BuildFactory(repository=build.repository, commit=build.commit)
    transition(build, Build.Status.CANCELLED)
    BuildFactory(repository=build.repository, commit=build.commit)  # fine once it ended


@pytest.mark.django_db(transaction=True)
def test_it_lets_only_one_of_many_concurrent_claims_win():
    job = JobFactory()
    wins = race(lambda: transition(Job.objects.get(pk=job.pk), Job.Status.RUNNING), [()] * 8)
    assert wins.count(True) == 1
    assert Event.objects.filter(job=job, new="running").count() == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_requests_for_one_sha_share_a_single_build(repository):
    results = race(request_build, [(repository, "master")] * 6)  # raises if any failed
    assert Build.objects.count() == 1
    assert {build.pk for build, _ in results} == {Build.objects.get().pk}
    assert sum(created for _, created in results) == 1


@pytest.mark.django_db
def test_the_reaper_runs_again_a_job_whose_heartbeat_stopped_then_gives_up(monkeypatch):
    from pipeline.services import builds

    sent = []
    monkeypatch.setattr(builds, "_enqueue_jobs", sent.extend)
    started = timezone.now() - timedelta(minutes=30)
    silent = timezone.now() - timedelta(seconds=45)
    job = JobFactory(status=Job.Status.RUNNING, timeout=3600, started_at=started,
                     heartbeat_at=silent, build__status=Build.Status.RUNNING)
    # A long job that still beats is alive, however long it has run.
    alive = JobFactory(status=Job.Status.RUNNING, timeout=3600, started_at=started,
                       heartbeat_at=timezone.now(), build__status=Build.Status.RUNNING)
    assert reap_stuck_runs() >= 1
    job.refresh_from_db()
    alive.refresh_from_db()
    assert job.status == "queued" and job.attempt == 2 and "running it again" in job.message
    assert sent == [job.pk] and alive.status == "running"

    # The second attempt's worker dies too: that was the last attempt.
    Job.objects.filter(pk=job.pk).update(status=Job.Status.RUNNING, heartbeat_at=silent)
    reap_stuck_runs()
    job.refresh_from_db()
    assert job.status == "error" and "gave up after 2 attempts" in job.message
    assert Build.objects.get(pk=job.build_id).status == "error"


@pytest.mark.django_db
def test_the_reaper_ends_builds_nobody_picked_up():
    build = BuildFactory()
    Build.objects.filter(pk=build.pk).update(created_at=timezone.now() - timedelta(hours=2))
    reap_stuck_runs()
    build.refresh_from_db()
    assert build.status == "error" and "no worker" in build.message


@pytest.mark.django_db
def test_queued_work_whose_task_was_lost_is_sent_again(monkeypatch):
    from pipeline.services import builds
    from pipeline.services.reaper import requeue_everything_queued

    sent_builds, sent_jobs = [], []
    monkeypatch.setattr(builds, "_enqueue_build", sent_builds.append)
    monkeypatch.setattr(builds, "_enqueue_jobs", sent_jobs.extend)
    queued = BuildFactory()
    lost = JobFactory(build__status=Build.Status.RUNNING,
                      enqueued_at=timezone.now() - timedelta(minutes=5))
    fresh = JobFactory(build__status=Build.Status.RUNNING, enqueued_at=timezone.now())
    Build.objects.filter(pk=queued.pk).update(created_at=timezone.now() - timedelta(minutes=5))
    reap_stuck_runs()
    assert sent_builds == [queued.pk] and sent_jobs == [lost.pk]
    # A standalone server starting again: its in-memory broker lost everything queued.
    sent_builds.clear()
    sent_jobs.clear()
    requeue_everything_queued()
    assert sent_builds == [queued.pk] and set(sent_jobs) == {lost.pk, fresh.pk}


@pytest.mark.django_db
def test_a_build_whose_worker_died_while_starting_it_ends(settings):
    build = BuildFactory(status=Build.Status.RUNNING)
    Build.objects.filter(pk=build.pk).update(
        started_at=timezone.now() - timedelta(seconds=settings.TRAINYARD["GIT_TIMEOUT"] + 120))
    reap_stuck_runs()
    build.refresh_from_db()
    assert build.status == "error" and "starting this build stopped" in build.message
