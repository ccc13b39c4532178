"""A deploy train survives a killed worker: real `celery worker` processes on two "hosts",
a real beat process (the reaper), a private Redis, the suite's PostgreSQL database, local
nodes whose apps really run. The worker deploying is killed while a node's `install`
waits at a gate; the train must resume on the other host and deploy no node twice."""

import uuid

import pytest
from django.contrib.auth.models import Permission

from nodes.models import Deployment
from pipeline.models import DeployTrain, Job
from pipeline.services import trains
from tests.factories import RepositoryFactory, UserFactory
from tests.faults import find_processes
from tests.helpers import Gate, GitRepo, wait_until
from tests.trainworld import ACCEPTANCE, ALICE, APP, BOB, DRAIN, SPEC, TrainWorld, serving, wait_for_train

pytestmark = pytest.mark.services
T = DeployTrain.Status


@pytest.fixture
def services(services):
    # One production node per batch: the rollout is mid-way when the worker dies.
    return {**services, "TRAINYARD_TRAIN_BATCH_SIZE": "1"}


@pytest.fixture
def gate():
    gate = Gate()
    yield gate
    gate.close()


def world_with_gate(tmp_path, gate, node_name):
    """A repository whose `install` waits at `gate` on the node named `node_name`."""
    installer = f"install_{uuid.uuid4().hex[:8]}.py"
    script = ("import os\n"
              f"if os.environ.get('TRAINYARD_NODE') == {node_name!r}:\n"
              + "".join(f"    {line}\n" for line in gate.script(before="installing").splitlines()))
    spec = SPEC.format(environments="staging").replace(
        "deploy:\n", f"deploy:\n  install: [python3, {installer}]\n")
    repo = GitRepo(tmp_path / "origin")
    repo.commit({"trainyard.yml": spec, "app.py": APP, "drain.py": DRAIN,
                 "acceptance.py": ACCEPTANCE, installer: script}, message="The app", author=ALICE)
    repo.commit({"b.txt": "b\n"}, message="Bob's change", author=BOB)
    world = TrainWorld(RepositoryFactory(name="faulty", clone_url=str(repo.path)), repo, tmp_path)
    world.add_nodes(("staging",))
    UserFactory(username="alice", email="alice@example.com")
    UserFactory(username="bob", email="bob@example.com")
    return world, installer


def kill_the_installing_host(hosts, installer, job):
    """Kill the host whose install waits at the gate: once the job's log shows it waiting
    (every node runs the installer; only the gated one prints "installing")."""
    wait_until(lambda: job.log_chunks.filter(text__contains="installing").exists(), timeout=60,
               message="the gated install to run")
    pids = wait_until(lambda: find_processes(installer), timeout=10,
                      message="the gated install's process")
    victim = next(w for w in hosts if any(w.owns(pid) for pid in pids))
    victim.kill()
    return victim


def test_a_worker_killed_during_a_lower_deploy_resumes_the_train(hosts, beat, gate, tmp_path):
    world, installer = world_with_gate(tmp_path, gate, "staging-1")
    try:
        world.green(timeout=180)
        train = trains.start_train(world.repository)
        deploy = wait_until(lambda: Job.objects.filter(build__train=train, name="deploy-staging",
                                                       status="running").first(),
                            timeout=90, message="the staging deploy to start")
        kill_the_installing_host(hosts, installer, deploy)
        first = wait_until(lambda: Deployment.objects.filter(node__name="staging-1",
                                                             status="failed").first(),
                           timeout=90, message="the interrupted deployment to be ended")
        assert "interrupted" in first.message
        gate.open()
        wait_for_train(train, T.AWAITING_APPROVAL, T.FAILED, timeout=180)
        assert train.status == T.AWAITING_APPROVAL, train.message
        deploy.refresh_from_db()
        assert (deploy.status, deploy.attempt) == ("passed", 2)
        assert serving(world.node("staging-1")) == train.head_sha
        assert not Deployment.objects.filter(status="running").exists()
    finally:
        gate.open()
        world.stop_apps()


def test_a_worker_killed_during_production_finishes_it_without_deploying_a_node_twice(
        hosts, beat, gate, tmp_path):
    world, installer = world_with_gate(tmp_path, gate, "prod-2")
    manager = UserFactory(username="rm")
    manager.user_permissions.add(Permission.objects.get(codename="release_manager"))
    try:
        world.green(timeout=180)
        train = trains.start_train(world.repository)
        trains.force(train, manager, "ship it")
        production = wait_until(lambda: Job.objects.filter(build__train=train, name="production",
                                                           status="running").first(),
                                timeout=120, message="the production rollout to start")
        kill_the_installing_host(hosts, installer, production)
        # prod-1 (off-cycle, batch 1) was done and recorded before prod-2 began.
        prod1 = Deployment.objects.get(node__name="prod-1", build__train=train)
        assert prod1.status == "succeeded"
        wait_until(lambda: Deployment.objects.filter(node__name="prod-2", status="failed").exists(),
                   timeout=90, message="prod-2's interrupted deployment to be ended")
        assert not world.node("prod-2").draining  # put back in service when it was ended
        gate.open()
        wait_for_train(train, T.DEPLOYED, T.FAILED, timeout=180)
        assert train.status == T.DEPLOYED, train.message
        production.refresh_from_db()
        assert production.attempt == 2
        assert [serving(world.node(f"prod-{i}")) for i in (1, 2, 3)] == [train.head_sha] * 3
        # No node was deployed twice: prod-1 kept its one deployment, prod-2 was deployed
        # again only because its first one was interrupted.
        rows = list(Deployment.objects.filter(build__train=train, node__environment="production")
                    .order_by("id").values_list("node__name", "status"))
        assert rows == [("prod-1", "succeeded"), ("prod-2", "failed"), ("prod-2", "succeeded"),
                        ("prod-3", "succeeded")]
        assert not Deployment.objects.filter(status="running").exists()
    finally:
        gate.open()
        world.stop_apps()
