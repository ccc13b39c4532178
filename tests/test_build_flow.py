"""Build orchestration against real git repositories and a real Celery worker."""

import pytest

from pipeline.models import Build, Event, Job
from pipeline.services.builds import BuildRequestError, request_build
from tests.helpers import Gate, build_ended, free_port, port_closed, wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def log_of(job):
    return "".join(job.log_chunks.values_list("text", flat=True))


def test_it_runs_each_check_as_a_job_and_passes(worker, repository, git_repo, developer):
    build, created = request_build(repository, "master", user=developer, via="test")
    assert created
    assert build.sha == git_repo.head()
    build_ended(build)
    assert build.status == "passed", build.message
    jobs = {job.name: job for job in build.jobs.all()}
    assert set(jobs) == {"lint", "unit"}
    assert all(job.status == "passed" and job.exit_code == 0 for job in jobs.values())
    assert "unit ok" in log_of(jobs["unit"])
    assert build.spec["checks"]["unit"]["argv"] == ["python3", "-c", "print('unit ok')"]
    kinds = list(Event.objects.filter(build=build).values_list("kind", "new"))
    assert ("build.status", "running") in kinds and ("build.status", "passed") in kinds


def test_it_fails_the_build_when_a_check_fails(worker, repository, git_repo):
    git_repo.commit({"trainyard.yml": "checks:\n  ok: python3 -c pass\n"
                     "  bad: python3 -c \"import sys; print('boom'); sys.exit(3)\"\n"},
                    branch="feature/bad")
    build, _ = request_build(repository, "feature/bad")
    build_ended(build)
    assert build.status == "failed"
    assert "bad" in build.message
    bad = build.jobs.get(name="bad")
    assert bad.status == "failed" and bad.exit_code == 3
    assert "boom" in log_of(bad)
    assert build.jobs.get(name="ok").status == "passed"


def test_it_kills_a_hanging_check_with_its_children_at_its_timeout(worker, repository, git_repo):
    # The grandchild holds a port open (the sandbox shares only the network with us): the
    # port closing tells that it died.
    port = free_port()
    script = (
        "import socket, subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import socket, time; "
        f"s = socket.create_server((\\'127.0.0.1\\', {port})); time.sleep(600)'])\n"
        "while True:\n"
        f"    try:\n        socket.create_connection(('127.0.0.1', {port}), 1).close(); break\n"
        "    except OSError:\n        time.sleep(0.02)\n"
        "print('hanging', flush=True)\n"
        "time.sleep(600)\n"
    )
    git_repo.commit({"hang.py": script,
                     "trainyard.yml": "checks:\n  hang: {run: python3 hang.py, timeout: 3}\n"},
                    branch="feature/hang")
    build, _ = request_build(repository, "feature/hang")
    build_ended(build, timeout=30)
    job = build.jobs.get()
    assert job.status == "failed", log_of(job)
    assert "timeout of 3s" in job.message
    assert "hanging" in log_of(job)

    wait_until(lambda: port_closed(port), timeout=10, message="the check's child process to die")


def test_it_caps_a_flood_of_output_and_still_ends(worker, repository, git_repo, settings):
    settings.TRAINYARD = {**settings.TRAINYARD, "OUTPUT_CAP_BYTES": 256 * 1024}
    flood = ("import sys\nchunk = 'x' * 1023 + '\\n'\n"
             "for _ in range(50 * 1024):\n    sys.stdout.write(chunk)\n")
    git_repo.commit({"flood.py": flood, "trainyard.yml": "checks:\n  flood: python3 flood.py\n"},
                    branch="feature/flood")
    build, _ = request_build(repository, "feature/flood")
    build_ended(build, timeout=60)
    job = build.jobs.get()
    assert job.status == "passed"
    assert job.output_bytes == 50 * 1024 * 1024
    assert job.output_truncated
    stored = log_of(job)
    assert len(stored) < 300 * 1024
    assert "output capped" in stored


def test_it_ends_in_error_naming_the_key_and_line_for_a_malformed_spec(worker, repository, git_repo):
    git_repo.commit({"trainyard.yml": "checks:\n  lint: ruff check .\nchekcs:\n  x: y\n"},
                    branch="feature/typo")
    build, _ = request_build(repository, "feature/typo")
    build_ended(build)
    assert build.status == "error"
    assert "chekcs" in build.message and "line 3" in build.message
    assert not build.jobs.exists()


def test_it_ends_in_error_when_the_spec_is_missing(worker, repository, git_repo):
    git_repo.commit({"trainyard.yml": None}, branch="feature/nospec")
    build, _ = request_build(repository, "feature/nospec")
    build_ended(build)
    assert build.status == "error"
    assert "no trainyard.yml" in build.message


def test_it_marks_a_command_that_does_not_exist_as_error(worker, repository, git_repo):
    git_repo.commit({"trainyard.yml": "checks:\n  ghost: no-such-tool --flag\n"},
                    branch="feature/ghost")
    build, _ = request_build(repository, "feature/ghost")
    build_ended(build)
    assert build.status == "error"
    job = build.jobs.get()
    assert job.status == "error" and "command not found: no-such-tool" in job.message


@pytest.mark.parametrize("branch", ["; rm -rf /", "../x", "-x", "a..b", "", "x" * 300, "a b",
                                    "--upload-pack=touch /tmp/pwned"])
def test_it_refuses_hostile_branch_names_before_running_anything(repository, branch):
    with pytest.raises(BuildRequestError, match="branch"):
        request_build(repository, branch)
    assert not Build.objects.exists()


def test_it_says_when_a_branch_does_not_exist(repository):
    with pytest.raises(BuildRequestError, match="'nope' does not exist in app"):
        request_build(repository, "nope")


def test_it_shares_one_build_between_two_requests_for_the_same_sha(repository):
    first, created_first = request_build(repository, "master")
    second, created_second = request_build(repository, "master")
    assert created_first and not created_second
    assert first.pk == second.pk
    assert Build.objects.count() == 1


def test_it_gives_checks_none_of_trainyards_secrets(worker, repository, git_repo, monkeypatch):
    monkeypatch.setenv("SECRET_KEY", "super-secret-value")
    monkeypatch.setenv("DATABASE_PASSWORD", "hunter2")
    spec = "checks:\n  env: python3 -c \"import os; print(sorted(os.environ))\"\n"
    git_repo.commit({"trainyard.yml": spec}, branch="feature/env")
    build, _ = request_build(repository, "feature/env")
    build_ended(build)
    output = log_of(build.jobs.get())
    assert "SECRET_KEY" not in output and "DATABASE_PASSWORD" not in output
    assert "TRAINYARD_SHA" in output and "PATH" in output


def test_it_stores_junit_results(worker, repository, git_repo):
    report = """<?xml version="1.0"?>
<testsuites><testsuite name="unit" tests="3">
  <testcase classname="t.test_a" name="test_ok" time="0.01"/>
  <testcase classname="t.test_a" name="test_bad" time="0.02">
    <failure message="assert 1 == 2">trace</failure></testcase>
  <testcase classname="t.test_a" name="test_skip"><skipped message="later"/></testcase>
</testsuite></testsuites>"""
    git_repo.commit({"report.xml": report,
                     "trainyard.yml": "checks:\n  unit: {run: python3 -c pass, junit: report.xml}\n"},
                    branch="feature/junit")
    build, _ = request_build(repository, "feature/junit")
    build_ended(build)
    job = build.jobs.get()
    outcomes = dict(job.test_results.values_list("name", "outcome"))
    assert outcomes == {"test_ok": "passed", "test_bad": "failed", "test_skip": "skipped"}
    assert "3 tests, 1 failed" in job.message


def test_it_stores_output_while_the_job_runs(worker, repository, git_repo):
    gate = Gate()
    git_repo.commit({"slow.py": gate.script(before="first line", after="done"),
                     "trainyard.yml": "checks:\n  slow: python3 slow.py\n"}, branch="feature/slow")
    build, _ = request_build(repository, "feature/slow")
    job = wait_until(lambda: Job.objects.filter(build=build, status="running").first(),
                     message="the job to start")
    wait_until(lambda: "first line" in log_of(job), message="output while running")
    job.refresh_from_db()
    assert job.status == "running"
    gate.open()
    build_ended(build)
    gate.close()
    assert build.status == "passed"


def test_a_crash_inside_trainyard_ends_the_job_in_error(worker, repository, monkeypatch):
    from pipeline.services import jobs

    def explode(*args, **kwargs):
        raise RuntimeError("bug in a storage layer")

    monkeypatch.setattr(jobs, "_store_outcome", explode)
    build, _ = request_build(repository, "master")
    build_ended(build)
    assert build.status == "error"
    job = build.jobs.first()
    assert job.status == "error" and "bug in a storage layer" in job.message


@pytest.mark.django_db
def test_a_report_of_one_test_says_one_test(tmp_path):
    from pipeline.services.jobs import _store_test_results
    from tests.factories import JobFactory

    (tmp_path / "report.xml").write_text(
        '<testsuite name="s" tests="1"><testcase classname="c" name="test_ok"/></testsuite>')
    job = JobFactory(junit_path="report.xml")
    assert _store_test_results(job, tmp_path) == "; 1 test, 0 failed"
