"""A deploy with no usable branch node says why, keeps saying it as things change, and
gives up after TRAINYARD_NODE_WAIT_TIMEOUT with that reason.

The reason is computed from the nodes the build's repository could use (its own and the
shared ones) and shown on the deploy job, the build (the radiator's row) and `bb`.
"""

import io
import threading
import time
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

from nodes.models import Node
from nodes.services import deploys
from nodes.services.allocation import why_no_node
from nodes.services.deploys import run_deploy_job
from nodes.services.health import check_node, record_health
from pipeline.models import ApiToken, Build, Event, Job
from tests.factories import BuildFactory, RepositoryFactory
from tests.helpers import wait_until

NO_KEY = "TRAINYARD_SSH_KEY_FILE is not set"
SOME_HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHostKeyOfANodeThatIsNeverReached"


@pytest.fixture
def app(db):
    return RepositoryFactory(name="app")


@pytest.fixture
def no_key_file(settings):
    settings.TRAINYARD = {**settings.TRAINYARD, "SSH_KEY_FILE": ""}


def ssh_node(name, repository=None):
    """An SSH node with a pinned key that Trainyard cannot log in to without a key file."""
    return Node.objects.create(name=name, transport=Node.Transport.SSH, repository=repository,
                               host="127.0.0.1", ssh_port=9, host_key=SOME_HOST_KEY,
                               base_path=f"/srv/{name}")


def running_build(repository, branch="feature/x"):
    return BuildFactory(repository=repository, commit__repository=repository, branch=branch,
                        status=Build.Status.RUNNING, started_at=timezone.now())


def deploy_job(repository):
    return Job.objects.create(build=running_build(repository), name="deploy", stage="deploy",
                              command=[], timeout=600)


def deliver(job):
    """What the run_job task does with a deploy job."""
    return run_deploy_job(Job.objects.select_related("build__repository").get(pk=job.pk))


# Why no node ---------------------------------------------------------------------------

@pytest.mark.django_db
def test_it_says_the_nodes_are_unhealthy_because_the_ssh_key_file_is_not_set(app, no_key_file):
    nodes = [ssh_node(f"ssh-{i}", repository=app if i < 2 else None) for i in range(3)]
    for node in nodes:
        assert check_node(node) == Node.Health.UNHEALTHY
        node.refresh_from_db()
        assert NO_KEY in node.health_message
    reason = why_no_node(running_build(app))
    assert reason.startswith(f"no usable branch node for app: 3 unhealthy: {NO_KEY}")
    assert reason.count(NO_KEY) == 1  # one message for the three


@pytest.mark.django_db
def test_it_names_the_builds_holding_busy_nodes_and_counts_the_rest(app, make_node):
    shop = RepositoryFactory(name="shop")
    holders = [running_build(app, "feature/a"), running_build(shop, "feature/b")]
    make_node("app-1", repository=app, held_by=holders[0])
    make_node("shared-1", held_by=holders[1])
    make_node("app-2", repository=app, enabled=False)
    make_node("shared-2", draining=True)
    make_node("shop-1", repository=shop, health=Node.Health.UNHEALTHY)  # not app's to use
    make_node("stage-1", environment=Node.Environment.STAGING)  # not a branch node
    ids = sorted(build.pk for build in holders)
    assert why_no_node(running_build(app)) == (
        f"no usable branch node for app: 2 busy (builds #{ids[0]}, #{ids[1]}), 1 draining, "
        "1 disabled")


@pytest.mark.django_db
def test_it_lists_different_health_problems_per_node(app, make_node):
    make_node("app-1", repository=app, health=Node.Health.UNHEALTHY,
              health_message="cannot connect to 127.0.0.1:2201: Connection refused")
    make_node("app-2", repository=app, health=Node.Health.UNHEALTHY,
              health_message="`true` exited 1")
    assert why_no_node(running_build(app)) == (
        "no usable branch node for app: 2 unhealthy (app-1: cannot connect to 127.0.0.1:2201: "
        "Connection refused; app-2: `true` exited 1)")


@pytest.mark.django_db
def test_it_says_when_no_node_could_serve_the_repository_at_all(app, make_node):
    make_node("shop-1", repository=RepositoryFactory(name="shop"))
    assert why_no_node(running_build(app)) == (
        "no usable branch node for app: no branch node is shared or reserved for it")


# A waiting deploy ----------------------------------------------------------------------

@pytest.mark.django_db(transaction=True)
def test_a_waiting_deploy_says_why_and_keeps_it_current(app, make_node):
    node = make_node("app-1", repository=app, health=Node.Health.UNHEALTHY,
                     health_message=f"{NO_KEY}: no key to log in to SSH nodes")
    job = deploy_job(app)
    assert deliver(job) is None
    job.refresh_from_db()
    job.build.refresh_from_db()
    unhealthy = f"no usable branch node for app: 1 unhealthy: {NO_KEY}: no key to log in to SSH nodes"
    assert job.status == Job.Status.QUEUED and job.message == unhealthy
    assert job.build.message == unhealthy  # what the radiator's row shows
    assert list(Event.objects.filter(kind="job.waiting", job=job).values_list("message", flat=True)) \
        == [unhealthy]
    assert deliver(job) is None  # nothing changed: nothing new to say
    assert Event.objects.filter(kind="job.waiting", job=job).count() == 1

    Node.objects.filter(pk=node.pk).update(enabled=False)
    assert deliver(job) is None
    job.refresh_from_db()
    job.build.refresh_from_db()
    assert job.message == job.build.message == "no usable branch node for app: 1 disabled"
    assert Event.objects.filter(kind="job.waiting", job=job).count() == 2

    Node.objects.filter(pk=node.pk).update(enabled=True, health=Node.Health.HEALTHY)
    with_node = deploys._claim(Job.objects.select_related("build").get(pk=job.pk))
    assert with_node == node
    job.build.refresh_from_db()
    assert job.build.message == ""  # no longer waiting


@pytest.mark.django_db(transaction=True)
def test_it_gives_up_after_the_configured_wait_and_ends_the_build_with_the_reason(app, make_node,
                                                                                  settings):
    settings.TRAINYARD = {**settings.TRAINYARD, "NODE_WAIT_TIMEOUT": 1800}
    blocker = running_build(app, "feature/other")
    node = make_node("app-1", repository=app, held_by=blocker)
    job = deploy_job(app)
    assert deliver(job) is None
    Event.objects.filter(kind="job.waiting", job=job).update(
        created_at=timezone.now() - timedelta(minutes=29))
    assert deliver(job) is None
    job.refresh_from_db()
    assert job.status == Job.Status.QUEUED  # not yet
    Event.objects.filter(kind="job.waiting", job=job).update(
        created_at=timezone.now() - timedelta(minutes=31))
    deliver(job)
    job.refresh_from_db()
    job.build.refresh_from_db()
    reason = f"no usable branch node for app: 1 busy (build #{blocker.pk})"
    assert job.status == Job.Status.ERROR and job.message.startswith(reason)
    assert "TRAINYARD_NODE_WAIT_TIMEOUT" in job.message and "30 min" in job.message
    assert job.build.status == Build.Status.ERROR and job.build.message == job.message
    node.refresh_from_db()
    assert node.held_by == blocker  # the other build keeps its node


@pytest.mark.django_db(transaction=True)
def test_a_node_turning_usable_gives_waiting_deploys_another_try(app, make_node, monkeypatch):
    node = make_node("app-1", repository=app, health=Node.Health.UNHEALTHY)
    dispatched = []
    from pipeline.services import builds

    monkeypatch.setattr(builds, "enqueue_jobs", lambda ids: dispatched.extend(ids))
    job = deploy_job(app)
    deliver(job)
    record_health(node, Node.Health.UNHEALTHY, "still down")
    assert dispatched == []
    record_health(node, Node.Health.HEALTHY, "reachable via local")
    assert dispatched == [job.pk]


# bb, end to end ------------------------------------------------------------------------

DEPLOY_SPEC = """\
checks:
  unit: python3 -c "print('unit ok')"
deploy:
  start: "true"
"""


@pytest.mark.django_db(transaction=True)
def test_bb_says_within_seconds_why_no_node_is_usable_and_ends_with_it(
        worker, live_server, repository, git_repo, developer, no_key_file, settings):
    git_repo.commit({"trainyard.yml": DEPLOY_SPEC}, branch="feature/x")
    for name in ("app-1", "app-2"):
        check_node(ssh_node(name, repository=repository))  # as the health beat would
    token = ApiToken.issue(developer, "test")[1]
    out, exit_codes = io.StringIO(), []

    def bb():
        try:
            call_command("bb", "app", "feature/x", "--wait", "--server", live_server.url,
                         "--token", token, "--poll", "0.1", stdout=out)
        except SystemExit as exc:
            exit_codes.append(exc.code)

    started = time.monotonic()
    thread = threading.Thread(target=bb)
    thread.start()
    reason = f"no usable branch node for app: 2 unhealthy: {NO_KEY}"
    wait_until(lambda: reason in out.getvalue(), timeout=60, message="bb to say why it waits")
    assert time.monotonic() - started < 15, out.getvalue()
    assert "waiting for a branch node" not in out.getvalue()

    # Half an hour later (TRAINYARD_NODE_WAIT_TIMEOUT), the beat's next dispatch ends it.
    build = Build.objects.get(branch="feature/x")
    Event.objects.filter(kind="job.waiting", build=build).update(
        created_at=timezone.now() - timedelta(seconds=settings.TRAINYARD["NODE_WAIT_TIMEOUT"] + 1))
    from pipeline.tasks import dispatch_waiting_deploys

    dispatch_waiting_deploys.delay()
    thread.join(60)
    assert not thread.is_alive()
    assert exit_codes == [2]
    last = out.getvalue().strip().splitlines()[-1]
    assert last.startswith(f"build #{build.pk} error: {reason}"), out.getvalue()
