"""Fixtures for fault tests: a private Redis, the suite's PostgreSQL database, worker
"hosts" and a beat process (the reaper's clock), all real processes."""

import shutil

import pytest

from tests.faults import BeatProcess, RedisServer, WorkerProcess, database_url, use_broker
from tests.helpers import require

# The workers and the reaper notice a silent job after this many seconds (default 30).
HEARTBEAT_TIMEOUT = 10


@pytest.fixture
def services(transactional_db, settings):
    """Environment for worker and beat processes: the test database and a private Redis."""
    from django.db import connection

    require(connection.vendor == "postgresql", "PostgreSQL (DATABASE_URL=postgres://...)")
    require(shutil.which("redis-server"), "redis-server")
    require(shutil.which("bwrap"), "bubblewrap (apt-get install bubblewrap)")
    from pipeline.celery import app

    with RedisServer() as redis, use_broker(app, redis.url()):
        yield {"DATABASE_URL": database_url(connection.settings_dict), "REDIS_URL": redis.url(),
               "TRAINYARD_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT),
               "TRAINYARD_CACHE_DIR": str(settings.TRAINYARD["CACHE_DIR"])}


@pytest.fixture
def hosts(services, tmp_path):
    """Two worker "hosts": each its own var directory (mirrors, workspaces, caches)."""
    workers = [WorkerProcess(services, tmp_path / f"host-{name}", f"host-{name}", concurrency=2)
               for name in ("a", "b")]
    for worker in workers:
        worker.start()
    yield workers
    for worker in workers:
        worker.stop()
        print(f"--- {worker.name} ---\n{worker.log()[-6000:]}")


@pytest.fixture
def beat(services, tmp_path):
    with BeatProcess(services, tmp_path / "beat") as process:
        yield process


