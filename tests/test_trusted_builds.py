"""Builds a team can trust with real code: each finding of an attacker or a heavy branch,
run through the real worker, git and the bubblewrap sandbox, now fails cleanly and harms
nothing else."""

import json
import shutil
import sys
from pathlib import Path

import pytest
from django.conf import settings as django_settings

from pipeline import sandbox
from pipeline.models import Job, Variable
from pipeline.services import git
from pipeline.services.builds import request_build
from tests.helpers import FAST_SPEC, Gate, build_ended, free_port, port_closed, require, wait_until

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _bubblewrap():
    require(shutil.which("bwrap"), "bubblewrap (apt-get install bubblewrap)")


def log_of(job):
    return "".join(job.log_chunks.values_list("text", flat=True))


def build_branch(repository, git_repo, branch, files):
    git_repo.commit(files, branch=branch)
    build, _ = request_build(repository, branch)
    return build_ended(build, timeout=120)


PROBE = """\
import json, os, sys
found = {}
for path in json.loads(sys.argv[1]):
    try:
        with open(path, "rb") as handle:
            found[path] = handle.read(200).decode("latin-1")
    except OSError as exc:
        pass
for pid in os.listdir("/proc"):
    if pid.isdigit():
        try:
            environ = open(f"/proc/{pid}/environ", "rb").read()
        except OSError:
            continue
        if b"SECRET_KEY" in environ or b"DATABASE" in environ:
            found[f"/proc/{pid}/environ"] = environ.decode("latin-1")[:200]
print("FOUND", json.dumps(found))
"""


def test_it_gives_a_check_none_of_trainyards_files_or_environment(worker, repository, git_repo,
                                                                   monkeypatch):
    monkeypatch.setenv("SECRET_KEY", "worker-secret-value")
    var = Path(django_settings.VAR_DIR)
    targets = [str(var / name) for name in ("secret_key", "api-token", "admin-credentials.txt")]
    targets += [str(Path(django_settings.BASE_DIR) / "pipeline" / "settings.py"),
                str(git.mirror_path(repository) / "config"), f"{sys.prefix}/pyvenv.cfg"]
    database = django_settings.DATABASES["default"]
    if database["ENGINE"].endswith("sqlite3"):
        targets.append(str(database["TEST"]["NAME"]))
    spec = json.dumps({"checks": {"probe": ["python3", "probe.py", json.dumps(targets)]}})
    build = build_branch(repository, git_repo, "feature/probe",
                         {"probe.py": PROBE, "trainyard.yml": spec})
    output = log_of(build.jobs.get())
    assert build.status == "passed", output
    assert 'FOUND {}' in output
    assert "worker-secret-value" not in output
    assert (var / "secret_key").read_text().strip()[:20] not in output


def test_a_check_cannot_touch_the_mirror(worker, repository, git_repo):
    mirror = git.mirror_path(repository)
    attack = ("import subprocess, sys\n"
              f"cfg = subprocess.run(['git', 'config', '-f', {str(mirror / 'config')!r},"
              " 'remote.origin.uploadpack', 'touch /tmp/pwned'])\n"
              f"obj = subprocess.run(['touch', {str(mirror / 'objects' / 'planted')!r}])\n"
              "print('config', cfg.returncode, 'objects', obj.returncode)\n")
    build = build_branch(repository, git_repo, "feature/mirror",
                         {"attack.py": attack, "trainyard.yml": "checks:\n  a: python3 attack.py\n"})
    assert "Read-only file system" in log_of(build.jobs.get())
    assert "uploadpack" not in (mirror / "config").read_text()
    assert not (mirror / "objects" / "planted").exists()
    # git inside the checkout still reads the mirror's objects (read-only alternates).
    spec = "checks:\n  log: git log -1 --format=%H\n"
    build = build_branch(repository, git_repo, "feature/gitlog", {"trainyard.yml": spec})
    assert build.status == "passed" and build.sha in log_of(build.jobs.get())


def test_nothing_a_check_starts_outlives_it(worker, repository, git_repo):
    port = free_port()
    leftover = ("import os, socket, subprocess, time\n"
                "subprocess.Popen(['setsid', 'python3', '-c', 'import socket, time; "
                f"s = socket.create_server((\"127.0.0.1\", {port})); time.sleep(60)'])\n"
                "while True:\n    try:\n"
                f"        socket.create_connection(('127.0.0.1', {port}), 1).close(); break\n"
                "    except OSError:\n        time.sleep(0.02)\n"
                "print('left a process behind', flush=True)\n")
    build = build_branch(repository, git_repo, "feature/leftover",
                         {"leave.py": leftover, "trainyard.yml": "checks:\n  a: python3 leave.py\n"})
    assert "left a process behind" in log_of(build.jobs.get())

    wait_until(lambda: port_closed(port), timeout=5,
               message="the check's leftover process to be gone")


def test_each_check_has_its_own_checkout_and_none_of_trainyards_packages(worker, repository,
                                                                       git_repo):
    claim = "open('claimed', 'x').write('mine')"  # fails if another check made it first
    no_django = "import importlib.util, sys; sys.exit(importlib.util.find_spec('django') is not None)"
    spec = {"checks": {f"c{i}": ["python3", "-c", claim] for i in range(3)}}
    spec["checks"]["isolated"] = ["python3", "-c", no_django]
    build = build_branch(repository, git_repo, "feature/trees",
                         {"trainyard.yml": json.dumps(spec)})
    assert build.status == "passed", {j.name: log_of(j) for j in build.jobs.all()}


def test_setup_runs_in_each_checkout_and_its_cache_is_reused(worker, repository, git_repo):
    make = ("import pathlib, time\npathlib.Path('made').mkdir()\n"
            "pathlib.Path('made/tool').write_text(open('deps.txt').read())\n")
    spec = ("setup: [python3 make.py]\n"
            "cache: {key: [deps.txt], paths: [made]}\n"
            "checks:\n  use: python3 -c \"print(open('made/tool').read())\"\n")
    files = {"make.py": make, "deps.txt": "tool==1\n", "trainyard.yml": spec}
    first = build_branch(repository, git_repo, "feature/setup-a", files)
    assert first.status == "passed", log_of(first.jobs.get())
    assert "cache miss" in log_of(first.jobs.get())
    second = build_branch(repository, git_repo, "feature/setup-b", {**files, "other.txt": "x"})
    second_log = log_of(second.jobs.get())
    assert second.status == "passed" and "cache hit" in second_log and "tool==1" in second_log
    assert "python3 make.py" not in second_log  # restored, not run again
    third = build_branch(repository, git_repo, "feature/setup-c", {**files, "deps.txt": "tool==2\n"})
    third_log = log_of(third.jobs.get())
    assert "cache miss" in third_log and "tool==2" in third_log


def test_a_failing_setup_fails_the_job_and_saves_nothing(worker, repository, git_repo):
    spec = ("setup: [python3 -c \"raise SystemExit(4)\"]\n"
            "cache: {key: [trainyard.yml], paths: [made]}\n"
            "checks:\n  use: python3 -c pass\n")
    build = build_branch(repository, git_repo, "feature/badsetup", {"trainyard.yml": spec})
    job = build.jobs.get()
    assert build.status == "failed" and job.status == "failed"
    assert "setup" in job.message and "exited 4" in job.message


def test_spec_env_check_env_and_variables_reach_the_check_and_secrets_are_masked(
        worker, repository, git_repo):
    Variable.objects.create(repository=repository, name="DEPLOY_TOKEN", value="s3cr3t-t0ken-value",
                            secret=True)
    Variable.objects.create(repository=repository, name="REGION", value="eu-west", secret=False)
    show = "import os; print(*(f'{k}={os.environ.get(k)}' for k in " \
           "['FROM_SPEC', 'FROM_CHECK', 'REGION', 'DEPLOY_TOKEN']))"
    spec = {"env": {"FROM_SPEC": "spec"},
            "checks": {"show": {"run": ["python3", "-c", show], "env": {"FROM_CHECK": "check"}}}}
    build = build_branch(repository, git_repo, "feature/env", {"trainyard.yml": json.dumps(spec)})
    output = log_of(build.jobs.get())
    assert build.status == "passed", output
    assert "FROM_SPEC=spec FROM_CHECK=check REGION=eu-west DEPLOY_TOKEN=***" in output
    assert "s3cr3t-t0ken-value" not in output
    assert "s3cr3t" not in json.dumps(build.spec)


def test_a_check_that_fills_the_disk_is_stopped_with_a_reason(worker, repository, git_repo,
                                                             settings):
    settings.TRAINYARD = {**settings.TRAINYARD, "WORKSPACE_MAX_BYTES": 20 * 1024**2}
    fill = ("import time\nwith open('big', 'wb') as f:\n"
            "    for _ in range(64):\n        f.write(b'x' * 1024 * 1024)\n        f.flush()\n"
            "print('filled', flush=True)\ntime.sleep(120)\n")
    build = build_branch(repository, git_repo, "feature/disk",
                         {"fill.py": fill, "trainyard.yml": "checks:\n  fill: python3 fill.py\n"})
    job = build.jobs.get()
    assert build.status == "failed"
    assert "workspace grew past 20 MiB" in job.message


def test_one_build_cannot_take_every_worker(worker, repository, git_repo, settings):
    settings.TRAINYARD = {**settings.TRAINYARD, "JOBS_PER_BUILD": 2}
    gate = Gate()
    checks = {f"hold{i}": ["python3", "hold.py"] for i in range(6)}
    git_repo.commit({"hold.py": gate.script(), "trainyard.yml": json.dumps({"checks": checks})},
                    branch="feature/greedy")
    greedy, _ = request_build(repository, "feature/greedy")
    running = Job.objects.filter(build=greedy, status="running")
    waiting = Job.objects.filter(build=greedy, status="queued", message__contains="JOBS_PER_BUILD")
    try:
        wait_until(lambda: running.count() == 2 and waiting.count() == 4,
                   message="two of the greedy build's jobs to run and four to wait, saying why")
        other = build_branch(repository, git_repo, "feature/other", {"trainyard.yml": FAST_SPEC})
        assert other.status == "passed"
        assert running.count() <= 2
    finally:
        gate.open()
        build_ended(greedy, timeout=120)
        gate.close()
    assert greedy.status == "passed"


@pytest.mark.django_db
def test_a_waiting_job_is_sent_again_once_not_by_every_job_that_ends(monkeypatch):
    """Every ending job dispatches waiting ones; two dispatchers must not both send the same
    job (with 20 builds at once, that churn was a good part of the worker's CPU)."""
    from pipeline.services import builds, jobs
    from tests.factories import BuildFactory, JobFactory

    sent = []
    monkeypatch.setattr(builds, "_enqueue_jobs", lambda ids: sent.extend(ids))
    build = BuildFactory(status="running")
    waiting = [JobFactory(build=build, message=jobs.WAITING_PREFIX + "8 jobs of app are running")
               for _ in range(3)]
    assert jobs.dispatch_waiting_jobs(build.repository_id) == 3
    assert jobs.dispatch_waiting_jobs(build.repository_id) == 0
    assert sorted(sent) == sorted(job.pk for job in waiting)


BOMB = "checks:\n  a: &a [" + ", ".join(["python3"] * 100) + "]\n" + "".join(
    f"  c{i}: *a\n" for i in range(500))


@pytest.mark.parametrize(("spec", "message"), [
    (BOMB, "expands to more than"),
    ("checks:\n  a: " + "[" * 5000 + "]" * 5000 + "\n", "nested more than"),
    ("checks:\n  a: {run: python3 -c pass, timeout: '²'}\n", "whole seconds"),
    ("checks:\n" + "".join(f"  c{i}: python3 -c pass\n" for i in range(1500)), "too many checks"),
    ("checks:\n  a: {run: python3 -c pass, timeout: 86400}\n", "whole seconds from 1 to"),
])
def test_any_spec_ends_as_a_build_with_a_reason(worker, repository, git_repo, spec, message):
    build = build_branch(repository, git_repo, "feature/hostile", {"trainyard.yml": spec})
    assert build.status == "error" and message in build.message
    assert not build.jobs.exists()
    # The same commit can be built again: nothing stays "already building".
    again, created = request_build(repository, "feature/hostile")
    assert created
    build_ended(again)


def test_a_crash_while_starting_ends_the_build_and_a_retry_runs(worker, repository, monkeypatch):
    from pipeline.services import builds

    def explode(build):
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(builds, "_read_spec", explode)
    build, _ = request_build(repository, "master")
    build_ended(build)
    assert build.status == "error" and "RecursionError" in build.message
    monkeypatch.undo()
    again, created = request_build(repository, "master")
    assert created and build_ended(again).status == "passed"


def test_without_bubblewrap_production_refuses_and_standalone_warns(worker, repository, git_repo,
                                                                   settings, monkeypatch):
    monkeypatch.setattr(sandbox, "BWRAP", "/nonexistent/bwrap")
    build = build_branch(repository, git_repo, "feature/nosandbox", {"trainyard.yml": FAST_SPEC})
    assert build.status == "passed"
    assert "WARNING" in log_of(build.jobs.first())
    settings.PRODUCTION = True
    git_repo.commit({"x": "1"}, branch="feature/nosandbox")
    refused, _ = request_build(repository, "feature/nosandbox")
    build_ended(refused)
    job = refused.jobs.first()
    assert refused.status == "error" and "bubblewrap" in job.message
    assert not job.log_chunks.filter(text__contains="lint ok").exists()
