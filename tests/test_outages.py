"""Outages: workers and the web ride out a Redis restart and terminated PostgreSQL backends;
publishing fails fast while Redis is away.

Real parts only: `celery worker` subprocesses and a private redis-server (tests/faults.py),
the suite's PostgreSQL test database, real git repositories. Every wait is on observed
state (a row, a log line) with a deadline.
"""

import shutil
import time
import urllib.error
import urllib.request

import pytest
from kombu.exceptions import OperationalError

from pipeline.models import Build, Job
from pipeline.services.builds import request_build
from tests.factories import RepositoryFactory
from tests.faults import RedisServer, WorkerProcess, database_url, terminate_backends, use_broker
from tests.helpers import FAST_SPEC, Gate, build_ended, require, wait_until

pytestmark = pytest.mark.services

# What a web request may spend finding out that nothing can be queued (it answers 503).
PUBLISH_BUDGET = 3.0


@pytest.fixture
def postgres(transactional_db):
    """The test database's name; the worker subprocesses must see committed rows."""
    from django.db import connection

    require(connection.vendor == "postgresql", "PostgreSQL (DATABASE_URL=postgres://...)")
    return connection.settings_dict["NAME"]


@pytest.fixture
def broker():
    """A private Redis this process publishes to (restarting it disturbs nobody else)."""
    require(shutil.which("redis-server"), "redis-server (apt-get install redis-server)")
    from django.conf import settings

    # The Redis transport's timeouts come with the Redis settings (REDIS_URL): with the
    # standalone memory:// options a paused Redis would hang a publish for ever.
    require(not settings.CELERY_BROKER_URL.startswith("memory"),
            "the Redis broker settings (REDIS_URL=redis://...)")
    from pipeline.celery import app

    with RedisServer() as server, use_broker(app, server.url()):
        yield server


@pytest.fixture
def worker(request, postgres, broker, tmp_path, settings):
    """A `celery -A pipeline worker` subprocess (prefork unless parametrized) on the test
    database and the private Redis, sharing this process's workspaces as docker-compose's
    web and worker share a volume. Named `worker` so that builds are really queued."""
    from django.db import connection

    proc = WorkerProcess({"DATABASE_URL": database_url(connection.settings_dict),
                          "REDIS_URL": broker.url(),
                          "TRAINYARD_WORKSPACE_DIR": str(settings.TRAINYARD["WORKSPACE_DIR"])},
                         tmp_path / "worker", "outages", concurrency=2,
                         pool=getattr(request, "param", "prefork"))
    proc.start()
    yield proc
    proc.stop()
    print(f"--- worker log ({proc.logfile}) ---\n{proc.log()[-20000:]}")  # shown on failure


@pytest.fixture
def gate():
    gate = Gate()
    yield gate
    gate.close()


@pytest.fixture
def outage_repo(git_repo, postgres):
    return RepositoryFactory(name="outage", clone_url=str(git_repo.path))


def _build_passes(repository, git_repo, timeout=60):
    """Commit something new, build it, and return the ended build."""
    git_repo.commit({"trainyard.yml": FAST_SPEC, "CHANGES": f"{time.monotonic()}\n"})
    build, created = request_build(repository, "master")
    assert created
    return build_ended(build, timeout=timeout)


def _job_running(build):
    return Job.objects.filter(build=build, status=Job.Status.RUNNING).exists()


@pytest.mark.parametrize("worker", ["prefork", "threads"], indirect=True)
def test_it_rides_out_a_redis_restart_in_the_middle_of_a_check(worker, broker, outage_repo,
                                                               git_repo, gate):
    git_repo.commit({"trainyard.yml": "checks:\n  held: python3 held.py\n",
                     "held.py": gate.script(before="holding", after="released")})
    build, _ = request_build(outage_repo, "master")
    wait_until(lambda: _job_running(build), timeout=60, message="the check to start")

    offset = len(worker.log())
    broker.stop()  # SIGKILL: Redis gone while the check runs and its message is unacked
    worker.wait_for_log("Cannot connect to", after=offset, timeout=30,
                        what="the worker to notice Redis is gone (and still be running)")
    broker.start()  # same port, empty: the in-flight message is gone with the old Redis
    worker.wait_for_log("Connected to", after=offset, timeout=30, what="the worker to reconnect")

    gate.open()
    build = build_ended(build)  # the check's outcome goes to PostgreSQL, not through Redis
    assert build.status == Build.Status.PASSED, build.message
    worker.assert_alive()
    assert _build_passes(outage_repo, git_repo).status == Build.Status.PASSED


@pytest.mark.parametrize("worker", ["prefork", "threads"], indirect=True)
def test_it_recovers_when_its_database_connections_are_terminated(worker, postgres, outage_repo,
                                                                  git_repo):
    # Three tasks (the build, two checks): both pool processes or threads hold a connection.
    assert _build_passes(outage_repo, git_repo).status == Build.Status.PASSED

    assert terminate_backends(postgres) > 0  # a PostgreSQL restart or failover, as seen here

    for _ in range(2):  # every later task succeeds, whichever process or thread takes it
        build = _build_passes(outage_repo, git_repo)
        assert build.status == Build.Status.PASSED, build.message
    worker.assert_alive()


def test_the_web_answers_the_first_request_after_its_connections_are_terminated(asgi_server,
                                                                                postgres):
    RepositoryFactory(name="wall")
    url = f"{asgi_server.url}/radiators/wall/snapshot.json"

    def status():
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code

    assert [status() for _ in range(3)] == [200] * 3  # the web's pool now holds connections
    assert terminate_backends(postgres) > 0

    # Not one 500: the pool tries each connection as it hands it out.
    assert [status() for _ in range(5)] == [200] * 5


def test_publishing_fails_fast_while_redis_is_down(broker):
    from pipeline.tasks import reap_stuck_runs

    reap_stuck_runs.delay()  # Redis is up: queued (nobody consumes it here)
    broker.stop()

    started = time.monotonic()
    with pytest.raises(OperationalError):
        reap_stuck_runs.delay()
    assert time.monotonic() - started < PUBLISH_BUDGET


def test_publishing_fails_fast_while_redis_hangs(broker):
    from pipeline.tasks import reap_stuck_runs

    reap_stuck_runs.delay()
    broker.pause()  # accepts connections, never answers
    try:
        started = time.monotonic()
        with pytest.raises(OperationalError):
            reap_stuck_runs.delay()
        assert time.monotonic() - started < PUBLISH_BUDGET
    finally:
        broker.resume()
    reap_stuck_runs.delay()  # and publishing works again once it answers


def test_a_build_asked_for_while_redis_is_down_answers_503_and_leaves_nothing_stuck(
        broker, postgres, outage_repo, developer, client, monkeypatch):
    import json

    from pipeline.models import ApiToken
    from pipeline.services import builds

    # This test has no worker: the real publish, not the suite's stand-in, must run.
    monkeypatch.setattr(builds, "_enqueue_build", _real_enqueue)
    token = ApiToken.issue(developer, "test")[1]

    def ask():
        return client.post("/api/repos/outage/builds", data=json.dumps({"branch": "master"}),
                           content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {token}")

    broker.stop()
    started = time.monotonic()
    refused = ask()
    assert refused.status_code == 503, refused.content
    assert time.monotonic() - started < PUBLISH_BUDGET + 2
    build = Build.objects.get()
    assert build.status == Build.Status.ERROR and "could not be queued" in build.message
    broker.start()
    assert ask().status_code == 201  # nothing says "already building"


def _real_enqueue(build_id):
    from pipeline.tasks import run_build

    run_build.delay(build_id)


@pytest.mark.parametrize("worker", ["threads"], indirect=True)
def test_a_check_running_while_its_database_connections_are_terminated_still_passes(
        worker, postgres, outage_repo, git_repo, gate):
    git_repo.commit({"trainyard.yml": "checks:\n  held: python3 held.py\n",
                     "held.py": gate.script(before="holding", after="released")})
    build, _ = request_build(outage_repo, "master")
    job = wait_until(lambda: Job.objects.filter(build=build, status="running").first(), timeout=60,
                     message="the check to start")
    wait_until(lambda: job.log_chunks.filter(text__contains="holding").exists(), timeout=30,
               message="the check's first output")
    assert terminate_backends(postgres) > 0  # under the running job: its log, its heartbeat
    gate.open()
    build = build_ended(build)
    assert build.status == Build.Status.PASSED, build.message
    job.refresh_from_db()
    assert job.attempt == 1 and "released" in "".join(job.log_chunks.values_list("text", flat=True))
