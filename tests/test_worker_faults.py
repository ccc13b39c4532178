"""More than one worker host, and workers killed mid-job: real `celery worker` processes
with separate var directories (two hosts), a real beat process running the reaper, a
private Redis, the suite's PostgreSQL database. Every wait is on observed state."""

import json
import time
import uuid

import pytest

from nodes.models import Deployment, Node
from pipeline.models import Build, Job
from pipeline.services.builds import request_build
from tests.factories import RepositoryFactory
from tests.faults import find_processes
from tests.helpers import Gate, build_ended, free_port, port_closed, wait_until

pytestmark = pytest.mark.services

@pytest.fixture
def repo(git_repo, services):
    return RepositoryFactory(name="faults", clone_url=str(git_repo.path))


def ran_jobs(worker):
    return worker.log().count("Task pipeline.tasks.run_job[")


def test_a_builds_jobs_run_on_two_hosts_and_pass_even_after_a_push(hosts, repo, git_repo):
    checks = {f"c{i}": ["python3", "-c", "import time; time.sleep(0.5)"] for i in range(6)}
    git_repo.commit({"trainyard.yml": json.dumps({"checks": checks})}, branch="feature/wide")
    build = build_ended(request_build(repo, "feature/wide")[0], timeout=120)
    assert build.status == Build.Status.PASSED, build.message
    assert all(ran_jobs(worker) for worker in hosts), "both hosts ran jobs of the build"
    for worker in hosts:
        assert (worker.var_dir / "workspaces" / "mirrors" / "faults.git").is_dir()
    # A push that only this (web) process fetched: each host fetches the new SHA itself.
    git_repo.commit({"NEWS": "more\n"}, branch="feature/wide")
    again = build_ended(request_build(repo, "feature/wide")[0], timeout=120)
    assert again.status == Build.Status.PASSED, again.message


def test_a_worker_killed_during_a_check_costs_at_most_a_minute(hosts, beat, repo, git_repo):
    gate, port, marker = Gate(), free_port(), f"held_{uuid.uuid4().hex[:8]}.py"
    # The check starts a child that holds a port: when the port closes, the child is gone.
    held = ("import subprocess, sys\n"
            "subprocess.Popen([sys.executable, '-c', 'import socket, time; "
            f"s = socket.create_server((\\'127.0.0.1\\', {port})); time.sleep(600)'])\n"
            + gate.script(before="holding"))
    git_repo.commit({marker: held, "trainyard.yml": f"checks:\n  held: python3 {marker}\n"},
                    branch="feature/held")
    build, _ = request_build(repo, "feature/held")
    job = wait_until(lambda: Job.objects.filter(build=build, status="running").first(), timeout=60,
                     message="the check to start")
    wait_until(lambda: not port_closed(port), timeout=30, message="the check's child to listen")
    pids = find_processes(marker)
    victim = next(w for w in hosts if any(w.owns(pid) for pid in pids))
    survivor = next(w for w in hosts if w is not victim)

    victim.kill()
    killed_at = time.monotonic()
    wait_until(lambda: port_closed(port), timeout=10, message="the check's processes to end with it")
    wait_until(lambda: Job.objects.filter(pk=job.pk, attempt=2).exists(), timeout=60,
               message="the reaper to run the job again")
    gate.open()
    try:
        build = build_ended(build, timeout=60)
    finally:
        gate.close()
    recovered = time.monotonic() - killed_at
    assert build.status == Build.Status.PASSED, build.message
    assert recovered < 60, f"the killed check cost {recovered:.0f}s"
    assert ran_jobs(survivor)
    assert "attempt 2" in "".join(Job.objects.get(pk=job.pk).log_chunks.values_list("text", flat=True))


def test_a_worker_killed_during_a_deploy_leaves_the_node_usable(hosts, beat, repo, git_repo,
                                                                tmp_path):
    gate, installer = Gate(), f"install_{uuid.uuid4().hex[:8]}.py"
    node = Node.objects.create(name="branch-x", environment=Node.Environment.BRANCH,
                               transport=Node.Transport.LOCAL, host="127.0.0.1",
                               app_port=free_port(), user="", base_path=str(tmp_path / "node"))
    spec = ("checks:\n  ok: python3 -c pass\n"
            f"deploy:\n  install: [python3, {installer}]\n")
    git_repo.commit({"trainyard.yml": spec, installer: gate.script(before="installing")},
                    branch="feature/deploy")
    build, _ = request_build(repo, "feature/deploy")
    deploy = wait_until(lambda: Job.objects.filter(build=build, stage="deploy",
                                                   status="running").first(),
                        timeout=90, message="the deploy to start")
    wait_until(lambda: Deployment.objects.filter(build=build, status="running").exists(),
               timeout=30, message="the deployment record")
    wait_until(lambda: deploy.log_chunks.filter(text__contains="installing").exists(), timeout=30,
               message="the install step to run")
    pids = find_processes(installer)
    victim = next(w for w in hosts if any(w.owns(pid) for pid in pids))
    victim.kill()
    first = Deployment.objects.get(build=build)
    wait_until(lambda: Deployment.objects.filter(pk=first.pk, status="failed").exists(), timeout=60,
               message="the interrupted deployment to be ended")
    gate.open()
    try:
        build = build_ended(build, timeout=90)
    finally:
        gate.close()
    assert build.status == Build.Status.PASSED, build.message
    first.refresh_from_db()
    assert "interrupted" in first.message
    assert Deployment.objects.filter(build=build, status="succeeded").count() == 1
    node.refresh_from_db()
    assert node.held_by_id is None and node.current_sha == build.sha
