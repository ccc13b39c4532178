"""A deploy task delivered twice does its work once; an interrupted deploy leaves the node
usable.

Against the real database (run it on PostgreSQL too: the races are what it is about), on
local nodes (folders + loopback ports) with the demo app, as in test_branch_nodes.py.
"""

import os
import shutil
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from nodes.models import Deployment, Node, NodeLease
from nodes.services import deploys
from nodes.services.allocation import allocate_node
from nodes.services.deploys import archive_for, recover_interrupted_deploy, run_deploy_job
from pipeline.models import Build, Event, Job
from pipeline.services import git
from pipeline.services.builds import end_build, record_commit
from pipeline.spec import parse_spec
from tests.factories import BuildFactory, JobFactory
from tests.helpers import free_port, race
from tests.test_branch_nodes import demo, get, local_nodes  # noqa: F401 (fixtures)

INTERRUPTED = "its worker stopped answering (no heartbeat for 30s)"


def deploy_job(repository, branch):
    """A running build of `branch` whose checks passed, with its deploy job queued (as
    finish_build_if_done leaves it). No smoke stage: the deploy's end ends the build."""
    sha = git.resolve_branch(repository, branch)
    spec = parse_spec(git.read_file(repository, sha, repository.spec_path)).to_dict()
    spec.update(smoke=None, acceptance=None)
    build = Build.objects.create(repository=repository, commit=record_commit(repository, sha),
                                 sha=sha, branch=branch, status=Build.Status.RUNNING,
                                 started_at=timezone.now(), spec=spec)
    return Job.objects.create(build=build, name="deploy", stage="deploy", command=[],
                              timeout=600)


def deliver(job_id):
    """What the run_job task does with a deploy job: load it, hand it over."""
    job = Job.objects.select_related("build__repository").get(pk=job_id)
    return run_deploy_job(job)


def allocations(build):
    return Event.objects.filter(kind="node.allocated", data__build=build.pk).count()


# A task delivered more than once --------------------------------------------------------

@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("copies", [2, 5])
def test_it_deploys_once_when_copies_of_the_task_run_at_once(demo, local_nodes, copies):  # noqa: F811
    local_nodes(3)
    job = deploy_job(demo, "feature/hello")
    build = job.build
    results = race(deliver, [(job.pk,)] * copies)  # an IntegrityError in any copy fails here
    assert sum(result is not None for result in results) == 1  # the others stepped aside
    job.refresh_from_db()
    build.refresh_from_db()
    assert job.status == Job.Status.PASSED, job.message
    assert build.status == Build.Status.PASSED, build.message
    deployment = Deployment.objects.get(build=build)  # exactly one
    assert deployment.status == Deployment.Status.SUCCEEDED
    assert allocations(build) == 1  # one node taken, once
    assert not Node.objects.filter(held_by=build).exists()  # and given back when it ended
    assert Event.objects.filter(kind="build.status", build=build, new="passed").count() == 1
    assert get(deployment.node.url + "version").strip() == build.sha


@pytest.mark.django_db(transaction=True)
def test_copies_allocating_for_one_build_at_once_share_one_node(local_nodes):  # noqa: F811
    local_nodes(5)
    build = BuildFactory(status=Build.Status.RUNNING)
    got = race(allocate_node, [(build,)] * 5)
    held = list(Node.objects.filter(held_by=build))
    assert len(held) == 1
    assert got == held * 5
    assert allocations(build) == 1


@pytest.mark.django_db(transaction=True)
def test_a_late_copy_for_an_ended_build_takes_no_node(demo, local_nodes):  # noqa: F811
    (node,) = local_nodes(1)
    job = deploy_job(demo, "feature/hello")
    assert end_build(job.build, Build.Status.CANCELLED, "cancelled by the test")
    assert deliver(job.pk) is None
    node.refresh_from_db()
    assert node.held_by is None and allocations(job.build) == 0
    assert not Deployment.objects.exists()
    job.refresh_from_db()
    assert job.status == Job.Status.CANCELLED  # not left queued on an ended build
    assert allocate_node(job.build) is None  # allocation alone refuses too


@pytest.mark.django_db(transaction=True)
def test_a_copy_racing_the_end_of_its_build_never_leaves_the_node_held(demo, local_nodes):  # noqa: F811
    (node,) = local_nodes(1)
    for _ in range(3):
        job = deploy_job(demo, "feature/hello")
        race(lambda work, *args: work(*args),
             [(deliver, job.pk), (end_build, job.build, Build.Status.CANCELLED, "cancelled")])
        node.refresh_from_db()
        assert node.held_by_id is None
        assert not Deployment.objects.filter(status=Deployment.Status.RUNNING).exists()


@pytest.mark.django_db(transaction=True)
def test_a_waiting_copy_says_why_and_takes_the_node_once_it_frees(demo, local_nodes):  # noqa: F811
    (node,) = local_nodes(1)
    blocker = BuildFactory(status=Build.Status.RUNNING, branch="feature/other")
    assert allocate_node(blocker) == node
    job = deploy_job(demo, "feature/hello")
    assert race(deliver, [(job.pk,)] * 3) == [None] * 3
    job.refresh_from_db()
    assert job.status == Job.Status.QUEUED and job.message.startswith(deploys.WAITING_FOR_NODE)
    assert Event.objects.filter(kind="job.waiting", job=job).count() == 1
    end_build(blocker, Build.Status.CANCELLED, "cancelled by the test")
    assert deliver(job.pk) is not None
    job.build.refresh_from_db()
    assert job.build.status == Build.Status.PASSED and job.build.message == "all checks passed"


# A worker that died mid-deploy ------------------------------------------------------------

def unpack(build, folder):
    folder.mkdir(parents=True)
    archive, _ = archive_for(build)
    subprocess.run(["tar", "-xzf", str(archive), "-C", str(folder)], check=True)


def leave_a_dead_worker_behind(job, node, *, switched):
    """What a worker killed in the middle of `job`'s deploy leaves: the job running with an
    old heartbeat, the node held by the build, a Deployment record `running`, and on the
    node a half-made release (killed while installing) or, `switched`, a release that went
    live but was never started (the old app still answers)."""
    build = job.build
    long_ago = timezone.now() - timedelta(minutes=10)
    Job.objects.filter(pk=job.pk).update(status=Job.Status.RUNNING, started_at=long_ago,
                                         heartbeat_at=long_ago, message=f"deploying to {node}")
    assert allocate_node(build) == node  # the sticky node
    Deployment.objects.create(node=node, build=build, sha=build.sha, branch=build.branch,
                              previous_sha=node.current_sha)
    base = Path(node.base_path)
    release = base / "releases" / build.sha
    unpack(build, release)
    if switched:
        for name, target in (("previous", node.current_sha), ("current", build.sha)):
            link = base / name
            link.unlink(missing_ok=True)
            link.symlink_to(f"releases/{target}")
    else:
        shutil.rmtree(release / "bin")  # the tarball was still being unpacked
        archive, _ = archive_for(build)
        (base / "releases" / f"{build.sha}.tar.gz.part").write_bytes(archive.read_bytes()[:100])


def rerun(job):
    """The reaper's second attempt: the job queued again."""
    Job.objects.filter(pk=job.pk).update(status=Job.Status.QUEUED, attempt=2, started_at=None,
                                         heartbeat_at=None)
    return deliver(job.pk)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("switched", [False, True], ids=["while-installing", "after-the-switch"])
def test_after_a_worker_dies_mid_deploy_the_node_serves_the_next_deploy(demo, local_nodes,  # noqa: F811
                                                                        switched):
    (node,) = local_nodes(1)
    first = deploy_job(demo, "master")
    assert deliver(first.pk).status == Job.Status.PASSED
    node.refresh_from_db()
    old_sha = node.current_sha
    assert get(node.url + "version").strip() == old_sha
    job = deploy_job(demo, "feature/hello")
    leave_a_dead_worker_behind(job, node, switched=switched)

    assert recover_interrupted_deploy(job, INTERRUPTED) is None

    stuck = Deployment.objects.get(build=job.build)
    assert stuck.status == Deployment.Status.FAILED
    assert stuck.message == f"interrupted: {INTERRUPTED}" and stuck.finished_at
    node.refresh_from_db()
    assert node.held_by is None
    assert node.last_health_check and node.health == Node.Health.HEALTHY  # checked again
    assert Event.objects.filter(kind="node.released", node=node).count() == 1
    assert NodeLease.objects.get(node=node).branch == "feature/hello"  # still its node

    assert rerun(job).status == Job.Status.PASSED
    job.refresh_from_db()
    job.build.refresh_from_db()
    assert job.status == Job.Status.PASSED, job.message
    assert job.build.status == Build.Status.PASSED, job.build.message
    redeploy = Deployment.objects.filter(build=job.build).first()  # newest first
    assert redeploy.node == node and redeploy.status == Deployment.Status.SUCCEEDED
    base = Path(node.base_path)
    assert os.readlink(base / "current") == f"releases/{job.build.sha}"
    assert get(node.url + "version").strip() == job.build.sha  # the new release answers
    assert not (base / "releases" / f"{job.build.sha}.tar.gz.part").exists()
    if switched:
        assert "already current: restarting" in redeploy.log
        assert os.readlink(base / "previous") == f"releases/{old_sha}"
    else:
        assert (base / "releases" / job.build.sha / "bin" / "drain").exists()


def held_and_stuck(node):
    build = BuildFactory(status=Build.Status.RUNNING)
    job = JobFactory(build=build, name="deploy", stage="deploy", status=Job.Status.RUNNING)
    Node.objects.filter(pk=node.pk).update(held_by=build)
    NodeLease.objects.create(node=node, repository=build.repository, branch=build.branch)
    Deployment.objects.create(node=node, build=build, sha=build.sha, branch=build.branch)
    return job


@pytest.mark.django_db(transaction=True)
def test_an_unreachable_node_leaves_the_pool_after_an_interrupted_deploy():
    node = Node.objects.create(name="gone", transport=Node.Transport.SSH, host="127.0.0.1",
                               ssh_port=free_port(), host_key="", base_path="/srv/gone")
    job = held_and_stuck(node)
    recover_interrupted_deploy(job, INTERRUPTED)
    node.refresh_from_db()
    assert node.health == Node.Health.UNHEALTHY and node.held_by is None
    assert not NodeLease.objects.exists()  # its branch gets another node next time
    assert not Deployment.objects.active().exists()


@pytest.mark.django_db(transaction=True)
def test_recovering_twice_is_harmless(local_nodes):  # noqa: F811
    (node,) = local_nodes(1)
    job = held_and_stuck(node)
    recover_interrupted_deploy(job, INTERRUPTED)
    recover_interrupted_deploy(job, INTERRUPTED)
    assert Event.objects.filter(kind="node.released").count() == 1
    assert Event.objects.filter(kind="deployment.status").count() == 1
    assert allocate_node(BuildFactory(status=Build.Status.RUNNING)) == node  # usable again


@pytest.mark.django_db(transaction=True)
def test_a_crash_mid_deploy_ends_the_job_and_leaves_the_node_usable(demo, local_nodes,  # noqa: F811
                                                                      monkeypatch):
    (node,) = local_nodes(1)
    job = deploy_job(demo, "feature/hello")

    def crash(*args, **kwargs):
        raise RuntimeError("a bug in Trainyard")

    monkeypatch.setattr(deploys, "_run_protocol", crash)
    deliver(job.pk)
    job.refresh_from_db()
    assert job.status == Job.Status.ERROR and "a bug in Trainyard" in job.message
    assert Deployment.objects.get(build=job.build).status == Deployment.Status.FAILED
    node.refresh_from_db()
    assert node.held_by is None
    monkeypatch.undo()
    again = deploy_job(demo, "feature/hello")
    assert deliver(again.pk).status == Job.Status.PASSED  # the node takes the next deploy
