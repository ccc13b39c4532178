"""The whole !bb flow on branch nodes: allocation, deploy, smoke tests, good to merge.

Local nodes are folders + loopback ports; SSH nodes are real sshd daemons on loopback
(tests/sshd.py). The demo app from examples/demo-app is what gets deployed.
"""

import os
import subprocess
import sys
import urllib.request
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from nodes.deploy import stop_app
from nodes.models import Deployment, Node, NodeLease
from nodes.services.allocation import allocate_node, release_node
from nodes.services.health import check_node
from nodes.transports import LocalTransport
from pipeline.demo import create_demo_repository
from pipeline.models import Build, Event, Job, PullRequest
from pipeline.services.builds import end_build, request_build
from pipeline.services.pulls import close_pull_request, open_pull_request, sync_pull_requests
from tests.factories import BuildFactory, RepositoryFactory
from tests.helpers import GitRepo, build_ended, free_port, race, wait_until

VENV_BIN = str(Path(sys.executable).parent)


# Fixtures ------------------------------------------------------------------------------

@pytest.fixture
def demo(db, tmp_path):
    path = create_demo_repository(tmp_path / "demo-origin")
    return RepositoryFactory(name="demo", clone_url=str(path))


def stop_apps(nodes):
    """The demo app runs detached (`deploy.run`) on each node it was deployed to: stop it."""
    for node in nodes:
        if (Path(node.base_path) / "shared" / "trainyard" / "app.pid").exists():
            stop_app(LocalTransport(), node.base_path, stop_timeout=1)


@pytest.fixture
def local_nodes(db, tmp_path):
    made = []

    def make(count):
        for _ in range(count):
            index = len(made) + 1
            made.append(Node.objects.create(
                name=f"local-{index}", transport=Node.Transport.LOCAL, host="127.0.0.1",
                app_port=free_port(), base_path=str(tmp_path / "nodes" / f"local-{index}")))
        return made[-count:]

    yield make
    stop_apps(Node.objects.filter(pk__in=[n.pk for n in made]))


@pytest.fixture
def ssh_pool(db, ssh_nodes, client_key, settings):
    settings.TRAINYARD = {**settings.TRAINYARD, "SSH_KEY_FILE": str(client_key.path)}
    nodes = [Node.objects.create(
        name=f"ssh-{i}", transport=Node.Transport.SSH, host=n.host, ssh_port=n.port, user="root",
        host_key=n.host_key, app_port=free_port(), base_path=str(n.base / f"t{free_port()}"),
        env={"PATH": f"{VENV_BIN}:/usr/bin:/bin"}) for i, n in enumerate(ssh_nodes, 1)]
    yield nodes
    stop_apps(Node.objects.filter(pk__in=[n.pk for n in nodes]))
    for sshd in ssh_nodes:
        if not sshd.accepts():
            sshd.start()


def job_log(build, name):
    return "".join(build.jobs.get(name=name).log_chunks.values_list("text", flat=True))


def get(url):
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


# Allocation ----------------------------------------------------------------------------

@pytest.mark.django_db
def test_it_prefers_never_used_then_least_recently_changed_nodes(local_nodes):
    old, new, never = local_nodes(3)
    now = timezone.now()
    Node.objects.filter(pk=old.pk).update(last_changed_at=now - timedelta(days=2))
    Node.objects.filter(pk=new.pk).update(last_changed_at=now - timedelta(hours=1))
    builds = [BuildFactory(branch=f"feature/{n}") for n in range(3)]
    assert [allocate_node(b).name for b in builds] == [never.name, old.name, new.name]
    assert allocate_node(BuildFactory(branch="feature/late")) is None


@pytest.mark.django_db
def test_it_gives_a_branch_its_node_again(local_nodes):
    first, second = local_nodes(2)
    build = BuildFactory(branch="feature/sticky")
    assert allocate_node(build) == first
    release_node(build)
    Node.objects.filter(pk=first.pk).update(last_changed_at=timezone.now())  # now the newest
    again = BuildFactory(repository=build.repository, commit__repository=build.repository,
                         branch="feature/sticky")
    assert allocate_node(again) == first
    assert allocate_node(again) == first  # a retried task keeps its node


@pytest.mark.django_db
@pytest.mark.parametrize("flags", [{"enabled": False}, {"draining": True},
                                   {"health": Node.Health.UNHEALTHY}])
def test_it_never_allocates_disabled_draining_or_unhealthy_nodes(local_nodes, flags):
    (node,) = local_nodes(1)
    Node.objects.filter(pk=node.pk).update(**flags)
    assert allocate_node(BuildFactory()) is None


@pytest.mark.django_db(transaction=True)
def test_twenty_concurrent_allocations_never_share_a_node(local_nodes):
    nodes = local_nodes(10)
    builds = [BuildFactory(branch=f"feature/race-{n}") for n in range(20)]
    nodes_got = race(allocate_node, [(build,) for build in builds])
    got = {build.pk: node.pk if node else None for build, node in zip(builds, nodes_got, strict=True)}
    taken = [pk for pk in got.values() if pk]
    assert len(got) == 20
    assert len(taken) == len(set(taken)) == 10
    assert set(taken) == {n.pk for n in nodes}
    for node in Node.objects.all():
        assert got[node.held_by_id] == node.pk


# The whole flow on local nodes ---------------------------------------------------------

@pytest.mark.django_db(transaction=True)
def test_it_deploys_smoke_tests_and_marks_the_pull_request_good_to_merge(worker, demo,
                                                                         local_nodes, developer):
    (node,) = local_nodes(1)
    pr, _ = open_pull_request(demo, "feature/hello", title="Say hello", user=developer)
    assert not pr.good_to_merge
    build, _ = request_build(demo, "feature/hello", user=developer)
    build_ended(build)
    assert build.status == "passed", build.message
    assert [j.name for j in build.jobs.all()] == ["lint", "unit", "integration", "deploy", "smoke"]
    node.refresh_from_db()
    assert build.deploy_url == node.url
    assert get(node.url + "version").strip() == build.sha
    assert node.current_sha == build.sha and node.current_branch == "feature/hello"
    assert node.held_by is None  # released once the build ended; still leased to the branch
    assert NodeLease.objects.get(node=node).branch == "feature/hello"
    assert Deployment.objects.get(build=build).status == "succeeded"
    assert "smoke" in job_log(build, "smoke") or "passed" in job_log(build, "smoke")
    pr.refresh_from_db()
    assert pr.good_to_merge


@pytest.mark.django_db(transaction=True)
def test_a_new_push_turns_good_to_merge_off_until_the_next_green_build(worker, demo, local_nodes):
    (node,) = local_nodes(1)
    pr, _ = open_pull_request(demo, "feature/hello")
    build_ended(request_build(demo, "feature/hello")[0])
    pr.refresh_from_db()
    assert pr.good_to_merge
    origin = GitRepo.__new__(GitRepo)
    origin.path = Path(demo.clone_url)
    new_sha = origin.commit({"NOTES.md": "more\n"}, branch="feature/hello")
    sync_pull_requests(demo)
    pr.refresh_from_db()
    assert pr.head_sha == new_sha and not pr.good_to_merge
    rebuilt = build_ended(request_build(demo, "feature/hello")[0])
    assert rebuilt.status == "passed"
    pr.refresh_from_db()
    assert pr.good_to_merge
    assert Deployment.objects.filter(node=node, status="succeeded").count() == 2  # same node
    assert get(node.url + "version").strip() == new_sha


@pytest.mark.django_db(transaction=True)
def test_a_failing_branch_is_never_deployed(worker, demo, local_nodes):
    local_nodes(1)
    build = build_ended(request_build(demo, "feature/broken")[0])
    assert build.status == "failed"
    assert not build.jobs.filter(stage="deploy").exists()
    assert not Deployment.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_a_build_waits_for_a_node_and_goes_on_when_one_frees(worker, demo, local_nodes):
    (node,) = local_nodes(1)
    blocker = BuildFactory(repository=demo, commit__repository=demo, branch="feature/other",
                           status=Build.Status.RUNNING)
    assert allocate_node(blocker) == node
    build, _ = request_build(demo, "feature/hello")
    waiting = f"no usable branch node for demo: 1 busy (build #{blocker.pk})"
    wait_until(lambda: Job.objects.filter(build=build, stage="deploy", message=waiting).exists(),
               timeout=120, message="the build to say it waits for a node")
    assert Event.objects.filter(kind="job.waiting", build=build).exists()
    build.refresh_from_db()
    assert build.message == waiting  # what the radiator's row shows
    end_build(blocker, Build.Status.CANCELLED, "cancelled by the test")  # frees the node
    build_ended(build)
    assert build.status == "passed", build.message
    assert build.message == "all checks passed"
    assert Deployment.objects.get(build=build).node == node


@pytest.mark.django_db(transaction=True)
def test_closing_a_pull_request_or_deleting_its_branch_frees_the_node(worker, demo, local_nodes):
    (node,) = local_nodes(1)
    pr, _ = open_pull_request(demo, "feature/hello")
    build_ended(request_build(demo, "feature/hello")[0])
    assert NodeLease.objects.filter(node=node, branch="feature/hello").exists()
    close_pull_request(pr, reason="closed by the test")
    assert not NodeLease.objects.exists()
    assert Event.objects.filter(kind="node.freed", node=node).exists()
    # A deleted branch: its pull request closes on the next sync, and the node frees.
    pr2, _ = open_pull_request(demo, "feature/broken")
    NodeLease.objects.create(node=node, repository=demo, branch="feature/broken")
    subprocess.run(["git", "-C", demo.clone_url, "branch", "-D", "feature/broken"], check=True,
                   capture_output=True)
    sync_pull_requests(demo)
    pr2.refresh_from_db()
    assert pr2.state == PullRequest.State.CLOSED
    assert not NodeLease.objects.exists()


# Over SSH ------------------------------------------------------------------------------

@pytest.mark.ssh
@pytest.mark.django_db(transaction=True)
def test_it_runs_the_whole_flow_over_ssh_and_rebuilds_on_the_same_node(worker, demo, ssh_pool):
    first = build_ended(request_build(demo, "feature/hello")[0])
    assert first.status == "passed", first.message + job_log(first, "deploy")
    node = Deployment.objects.get(build=first).node
    assert node.transport == "ssh"
    assert get(node.url + "version").strip() == first.sha
    current = Path(node.base_path) / "current"
    assert os.readlink(current) == f"releases/{first.sha}"
    origin = GitRepo.__new__(GitRepo)
    origin.path = Path(demo.clone_url)
    origin.commit({"NOTES.md": "again\n"}, branch="feature/hello")
    second = build_ended(request_build(demo, "feature/hello")[0])
    assert second.status == "passed"
    assert Deployment.objects.get(build=second).node == node


@pytest.mark.ssh
@pytest.mark.django_db(transaction=True)
def test_it_checks_ssh_node_health_and_records_changes(ssh_pool, ssh_nodes):
    node = ssh_pool[0]
    assert check_node(node) == Node.Health.HEALTHY
    node.refresh_from_db()
    assert node.health_latency_ms is not None and node.last_health_check
    ssh_nodes[0].stop()
    assert check_node(node) == Node.Health.UNHEALTHY
    node.refresh_from_db()
    assert str(ssh_nodes[0].port) in node.health_message
    changes = list(Event.objects.filter(kind="node.health", node=node).values_list("new", flat=True))
    assert changes == ["unhealthy", "healthy"]  # newest first
    assert allocate_node(BuildFactory()) in ssh_pool[1:]


@pytest.mark.ssh
@pytest.mark.django_db(transaction=True)
def test_a_node_dying_mid_deploy_fails_clearly_and_the_next_build_moves_on(worker, ssh_pool,
                                                                           ssh_nodes, tmp_path):
    for extra in ssh_pool[1:]:
        Node.objects.filter(pk=extra.pk).update(enabled=False)
    repo = GitRepo(tmp_path / "slow-origin")
    spec = ("checks:\n  ok: python3 -c pass\n"
            "deploy:\n  install: {run: [python3, -c, 'import time,sys; print(\"installing\", flush=True);"
            " time.sleep(float(open(\"DELAY\").read()))'], timeout: 120}\n")
    good = repo.commit({"trainyard.yml": spec, "DELAY": "0"}, branch="feature/slow")
    app = RepositoryFactory(name="slow", clone_url=str(repo.path))
    assert build_ended(request_build(app, "feature/slow")[0]).status == "passed"
    node = Node.objects.get(pk=ssh_pool[0].pk)
    repo.commit({"DELAY": "60"}, branch="feature/slow")
    build, _ = request_build(app, "feature/slow")
    wait_until(lambda: build.jobs.filter(stage="deploy").exists()
               and "installing" in job_log(build, "deploy"), timeout=60,
               message="the install step to start")
    ssh_nodes[0].stop()
    build_ended(build)
    assert build.status == "failed"
    deploy = build.jobs.get(stage="deploy")
    assert "failed" in deploy.message and str(ssh_nodes[0].port) in job_log(build, "deploy")
    node.refresh_from_db()
    assert node.health == Node.Health.UNHEALTHY and node.held_by is None
    assert not NodeLease.objects.filter(node=node).exists()
    assert os.readlink(Path(node.base_path) / "current") == f"releases/{good}"
    Node.objects.filter(pk=ssh_pool[1].pk).update(enabled=True)
    ssh_nodes[0].start()
    repo.commit({"DELAY": "0"}, branch="feature/slow")
    retry = build_ended(request_build(app, "feature/slow")[0])
    assert retry.status == "passed"
    assert Deployment.objects.get(build=retry).node.pk == ssh_pool[1].pk


@pytest.mark.ssh
@pytest.mark.django_db(transaction=True)
def test_hostile_branch_names_never_run_anything_on_the_node(worker, ssh_pool, tmp_path):
    repo = GitRepo(tmp_path / "hostile-origin")
    marker = Path("/tmp") / f"typwn{os.getpid()}"  # short: branch names stop at 200 chars
    marker.unlink(missing_ok=True)
    spec = ("checks:\n  ok: python3 -c pass\n"
            "deploy:\n  start: [python3, -c, 'import os; print(os.environ[\"TRAINYARD_BRANCH\"])']\n")
    branch = f"x$(touch${{IFS}}{marker})`touch${{IFS}}{marker}`'\";touch{marker}"
    repo.commit({"trainyard.yml": spec}, branch=branch)
    app = RepositoryFactory(name="hostile", clone_url=str(repo.path))
    build = build_ended(request_build(app, branch)[0])
    assert build.status == "passed", build.message + job_log(build, "deploy")
    assert branch in job_log(build, "deploy")  # it arrived as data, printed literally
    assert not marker.exists()
    assert not any(p.name.startswith("typwn") for node in ssh_pool
                   for p in Path(node.base_path).rglob("*"))


@pytest.mark.django_db
def test_the_beat_task_checks_every_enabled_node(local_nodes, tmp_path):
    from nodes.tasks import check_node_health

    up, app_down, off = local_nodes(3)
    Node.objects.filter(pk=app_down.pk).update(current_sha="a" * 40,
                                                health_url=f"http://127.0.0.1:{free_port()}/health")
    Node.objects.filter(pk=off.pk).update(enabled=False)
    check_node_health.apply()
    states = dict(Node.objects.values_list("name", "health"))
    assert states == {up.name: "healthy", app_down.name: "degraded", off.name: "unknown"}
    # A node whose app is down is still where a deploy can go: the deploy restarts it.
    assert allocate_node(BuildFactory()) in (up, app_down)
    Node.objects.filter(pk=up.pk).update(base_path="/nonexistent/x", transport="ssh", host_key="")
    check_node_health.apply()
    assert Node.objects.get(pk=up.pk).health == "unhealthy"


@pytest.mark.django_db(transaction=True)
def test_the_default_branch_is_checked_but_never_parked_on_a_branch_node(worker, demo, local_nodes):
    local_nodes(1)
    build = build_ended(request_build(demo, "master")[0])
    assert build.status == "passed" and build.kind == Build.Kind.MASTER
    assert [j.stage for j in build.jobs.all()] == ["checks"] * 3
    assert not Deployment.objects.exists() and not NodeLease.objects.exists()
