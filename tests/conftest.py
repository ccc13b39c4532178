"""Shared fixtures: people, real git repositories, an in-process Celery worker, servers.

With TRAINYARD_TEST_SERVICES=1 (set by .ci/run) the suite insists on PostgreSQL and
Redis and stops at once if either is missing.
"""

import os
import shutil
import threading

import pytest
from playwright.sync_api import sync_playwright

from tests.factories import RepositoryFactory, UserFactory
from tests.helpers import FAST_SPEC, GitRepo, free_port, require, wait_until

QUEUES = ["default", "checks", "deploys"]

# Real sshd nodes on loopback: client_key, sshd_factory, ssh_nodes.
pytest_plugins = ["tests.sshd", "tests.fault_fixtures", "tests.train_fixtures"]


def pytest_sessionstart(session):
    if os.environ.get("TRAINYARD_TEST_SERVICES") != "1":
        return
    from django.conf import settings

    engine = settings.DATABASES["default"]["ENGINE"]
    if "postgresql" not in engine:
        pytest.exit(f"TRAINYARD_TEST_SERVICES=1 but the database is {engine}", returncode=3)
    import redis

    try:
        client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=3)
        client.ping()
        client.flushdb()  # a dedicated database: no queued task of an earlier run survives
    except redis.RedisError as exc:
        pytest.exit(f"TRAINYARD_TEST_SERVICES=1 but Redis does not answer: {exc}", returncode=3)


@pytest.fixture(scope="session")
def setup_cache_dir(tmp_path_factory):
    """One setup cache for the whole session, as one worker host keeps it: the demo's
    virtualenv is built once, not once per test."""
    return tmp_path_factory.mktemp("setup-cache")


@pytest.fixture(autouse=True)
def _isolated_workspaces(settings, tmp_path, setup_cache_dir):
    settings.TRAINYARD = {**settings.TRAINYARD, "WORKSPACE_DIR": tmp_path / "workspaces",
                          "CACHE_DIR": setup_cache_dir, "CHECK_TIMEOUT": 120}


# People -------------------------------------------------------------------------------

@pytest.fixture
def developer(db):
    """A team member who may build branches and open or close pull requests."""
    return UserFactory(username="dev", perms=["pipeline.add_build", "pipeline.add_pullrequest",
                                              "pipeline.change_pullrequest"])


@pytest.fixture
def viewer(db):
    """Logged in, but may not change anything."""
    return UserFactory(username="viewer")


@pytest.fixture
def admin_user(db):
    from django.contrib.auth import get_user_model

    return get_user_model().objects.create_superuser("boss", "boss@example.com", "pw-boss-123")


# Repositories -------------------------------------------------------------------------

@pytest.fixture
def git_repo(tmp_path):
    """A real git repository with a fast passing spec on master."""
    repo = GitRepo(tmp_path / "origin")
    repo.commit({"trainyard.yml": FAST_SPEC, "README": "hello\n"}, message="Initial commit")
    return repo


@pytest.fixture
def repository(db, git_repo):
    return RepositoryFactory(name="app", clone_url=str(git_repo.path))


# Celery -------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def _celery_worker(django_db_setup, django_db_blocker):
    from celery.contrib.testing.worker import start_worker

    from pipeline.celery import app

    with start_worker(app, pool="threads", concurrency=6, perform_ping_check=False,
                      queues=QUEUES, shutdown_timeout=30, loglevel="WARNING") as worker:
        yield worker
    # Connections the worker's threads still hold would keep PostgreSQL from dropping the
    # test database at the end of the session: end them.
    from django.db import connection

    if connection.vendor == "postgresql":
        with django_db_blocker.unblock(), connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                           " WHERE datname = current_database() AND pid <> pg_backend_pid()")


@pytest.fixture
def worker(transactional_db, _celery_worker):
    """A real Celery worker (threads) consuming from the configured broker."""
    from celery.worker import state

    yield _celery_worker
    # Let the worker finish what the test started before the database is flushed: on
    # PostgreSQL a TRUNCATE racing a task's queries can deadlock.
    wait_until(lambda: not state.active_requests and not state.reserved_requests,
               timeout=60, message="the worker to go idle")


@pytest.fixture(autouse=True)
def _tasks_only_with_a_worker(request, monkeypatch):
    """The worker is session-wide: once a test started it, it would also run the tasks of
    later tests that asked for no worker, racing their assertions and teardown. Those
    tests queue nothing instead."""
    if {"worker", "hosts"} & set(request.fixturenames):  # in-process, or worker processes
        return
    from pipeline.services import builds

    monkeypatch.setattr(builds, "_enqueue_build", lambda build_id: None)
    monkeypatch.setattr(builds, "_enqueue_jobs", lambda job_ids: None)


# Servers ------------------------------------------------------------------------------

class ThreadedUvicorn:
    def __init__(self, app_path, port):
        import uvicorn

        config = uvicorn.Config(app_path, host="127.0.0.1", port=port, lifespan="off",
                                log_level="warning", ws="websockets-sansio")
        self.server = uvicorn.Server(config)
        self.url = f"http://127.0.0.1:{port}"
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)

    def __enter__(self):
        self.thread.start()
        wait_until(lambda: self.server.started, timeout=20, message="uvicorn to start")
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="session")
def asgi_server(django_db_setup):
    """Trainyard's ASGI app (HTTP + websockets) served by uvicorn in a thread."""
    with ThreadedUvicorn("pipeline.asgi:application", free_port()) as server:
        yield server


# Browser ------------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    require(os.path.exists(CHROMIUM), "Debian's chromium (apt-get install chromium)")
    return {
        **browser_type_launch_args,
        "executable_path": CHROMIUM,
        "args": ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"],
    }


# Playwright, one per browser test module -----------------------------------------------
#
# Playwright's sync API keeps an event loop running in the main thread for as long as it
# lives. Django then refuses ORM calls there (SynchronousOnlyOperation) and
# `async_to_sync` refuses to run (events published from this thread are lost). So the
# ORM is allowed only while a browser module's Playwright runs, and it stops when the
# module ends: tests after it get a clean main thread, and no subprocess they start (such as
# `manage.py check --deploy`) inherits DJANGO_ALLOW_ASYNC_UNSAFE.

@pytest.fixture(scope="module")
def _orm_beside_playwright():
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    yield
    if previous is None:
        del os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"]
    else:
        os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture(scope="module")
def playwright(_orm_beside_playwright, _pw_api_request_contexts):
    pw = sync_playwright().start()
    if _pw_api_request_contexts:
        _pw_api_request_contexts.instrument(pw)
    yield pw
    pw.stop()


@pytest.fixture(scope="module")
def browser_type(playwright, browser_name):
    return getattr(playwright, browser_name)


@pytest.fixture(scope="module")
def browser_context_args():
    # pytest-playwright's own (session-scoped) one would start Playwright for the session.
    return {"viewport": {"width": 1920, "height": 1080}}  # a wall screen


@pytest.fixture(scope="module")
def browser(browser_type, browser_type_launch_args):
    browser = browser_type.launch(**browser_type_launch_args)
    yield browser
    browser.close()


@pytest.fixture
def make_node(db, tmp_path):
    """make_node(name, repository=None, **fields): a local branch node with its own port
    and folder."""
    from nodes.models import Node

    def make(name, repository=None, **fields):
        return Node.objects.create(name=name, transport=Node.Transport.LOCAL, repository=repository,
                                   app_port=9000 + Node.objects.count(),
                                   base_path=str(tmp_path / name), **fields)
    return make
