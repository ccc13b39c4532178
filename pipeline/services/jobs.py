"""Run one job of a build: a command in the build's checkout, output stored as it comes."""

import logging
import os
import re
import sys
import time
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from nodes.transports import LocalTransport, TransportError
from pipeline.models import Job, LogChunk, TestResult
from pipeline.services.builds import finish_build_if_done, workspace_for
from pipeline.services.junit import ReportError, parse_junit
from pipeline.statemachine import transition

logger = logging.getLogger(__name__)
FLUSH_SECONDS = 0.25
FLUSH_BYTES = 64 * 1024
_VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


def check_environment(job, workspace, extra=None):
    """The whole environment a check sees: built from scratch, so none of Trainyard's
    own secrets (SECRET_KEY, DATABASE_URL, tokens...) can leak into it."""
    build = job.build
    home = Path(workspace) / ".trainyard-home"
    home.mkdir(exist_ok=True)
    tool_dir = str(Path(sys.executable).parent)
    env = {
        "PATH": os.pathsep.join([tool_dir, "/usr/local/bin", "/usr/bin", "/bin"]),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "CI": "true",
        "TRAINYARD": "1",
        "TRAINYARD_BUILD_ID": str(build.pk),
        "TRAINYARD_JOB": job.name,
        "TRAINYARD_SHA": build.sha,
        "TRAINYARD_BRANCH": build.branch,
        "TRAINYARD_REPOSITORY": build.repository.name,
    }
    env.update(extra or {})
    return env


def expand_variables(argv, env):
    """`$NAME` and `${NAME}` in arguments take values from the job's environment (as a
    shell would), but the result is still an argument list: no shell ever runs."""
    return [_VARIABLE.sub(lambda m: env.get(m.group(1) or m.group(2), ""), arg) for arg in argv]


class LogWriter:
    """Buffers output and stores it in ordered chunks a few times a second."""

    def __init__(self, job):
        self.job = job
        self.seq = LogChunk.objects.filter(job=job).count()
        self.buffer = []
        self.size = 0
        self.flushed_at = time.monotonic()

    def write(self, text):
        self.buffer.append(text)
        self.size += len(text)
        if self.size >= FLUSH_BYTES or time.monotonic() - self.flushed_at >= FLUSH_SECONDS:
            self.flush()

    def tick(self):
        if time.monotonic() - self.flushed_at >= FLUSH_SECONDS:
            self.flush()

    def flush(self):
        self.flushed_at = time.monotonic()
        if not self.buffer:
            return
        LogChunk.objects.create(job=self.job, seq=self.seq, text="".join(self.buffer))
        Job.objects.filter(pk=self.job.pk).update(heartbeat_at=timezone.now())
        self.seq += 1
        self.buffer, self.size = [], 0


WAITING_FOR_NODE = "waiting for a branch node"


def run_job(job_id):
    """Claim a queued job, run it, store the outcome, move the build on."""
    job = Job.objects.select_related("build__repository").filter(pk=job_id).first()
    if job is None:
        return None
    if job.stage == "deploy":
        return _guarded(job, run_deploy_job)
    if not transition(job, Job.Status.RUNNING, started_at=timezone.now()):
        return None
    extra = {"TARGET_URL": job.build.deploy_url} if job.stage == "smoke" else None
    _guarded(job, _run_command_job, extra)
    finish_build_if_done(job.build_id)
    return job


def _guarded(job, work, *args):
    """A bug in Trainyard must end the job in error, not leave it running forever."""
    try:
        return work(job, *args)
    except Exception as exc:
        logger.exception("job %s crashed", job.pk)
        transition(job, Job.Status.ERROR, finished_at=timezone.now(),
                   message=f"Trainyard failed while running this job: {exc!r}"[:2000])
        finish_build_if_done(job.build_id)
        return job


def run_deploy_job(job):
    """Hold a branch node (or wait for one), then deploy the build's SHA to it."""
    from nodes.services.allocation import allocate_node
    from nodes.services.deploys import deploy_build

    build = job.build
    node = allocate_node(build)
    if node is None:
        _say_waiting(job)
        return None
    from pipeline.models import Build

    Build.objects.filter(pk=build.pk, message=WAITING_FOR_NODE).update(message="")
    if not transition(job, Job.Status.RUNNING, started_at=timezone.now(),
                      message=f"deploying to {node.name}"):
        return None
    log = LogWriter(job)
    deployment = deploy_build(build, node, build.spec["deploy"], log=log.write, on_tick=log.tick)
    log.flush()
    if deployment.status == deployment.Status.SUCCEEDED:
        from pipeline.models import Build

        Build.objects.filter(pk=build.pk).update(deploy_url=node.url)
        build.deploy_url = node.url
        transition(job, Job.Status.PASSED, finished_at=timezone.now(),
                   message=f"deployed to {node.name}: {node.url}")
    else:
        transition(job, Job.Status.FAILED, finished_at=timezone.now(),
                   message=f"deploy to {node.name} failed: {deployment.message}")
    finish_build_if_done(build.pk)
    return job


def _say_waiting(job):
    """The job, its build (shown on the radiator's row) and an Event say why it waits."""
    from pipeline.models import Build
    from pipeline.services.events import record_event

    with transaction.atomic():
        if Job.objects.filter(pk=job.pk, status=Job.Status.QUEUED).exclude(
                message=WAITING_FOR_NODE).update(message=WAITING_FOR_NODE):
            Build.objects.filter(pk=job.build_id, message="").update(message=WAITING_FOR_NODE)
            record_event("job.waiting", subject=job, new="queued", message=WAITING_FOR_NODE)


def _run_command_job(job, extra_env=None):
    workspace = workspace_for(job.build)
    log = LogWriter(job)
    try:
        env = check_environment(job, workspace, extra_env)
        argv = expand_variables(job.command, env)
        log.write(f"$ {job.command_display}\n")
        result = LocalTransport().run(
            argv, cwd=workspace, env=env, timeout=job.timeout, on_output=log.write,
            output_cap=settings.TRAINYARD["OUTPUT_CAP_BYTES"], on_tick=log.tick,
        )
    except (TransportError, OSError) as exc:
        log.write(f"\n[trainyard: {exc}]\n")
        log.flush()
        transition(job, Job.Status.ERROR, finished_at=timezone.now(), message=str(exc))
    else:
        log.write(f"\n[trainyard: {result.describe(job.timeout)} after {result.duration:.1f}s]\n")
        log.flush()
        _store_outcome(job, result, workspace)


def _store_outcome(job, result, workspace):
    message = result.describe(job.timeout)
    with transaction.atomic():
        if job.junit_path:
            message += _store_test_results(job, Path(workspace) / job.junit_path)
        transition(
            job, Job.Status.PASSED if result.ok else Job.Status.FAILED,
            finished_at=timezone.now(), exit_code=result.exit_code, message=message,
            output_bytes=result.output_bytes, output_truncated=result.truncated,
        )


def _store_test_results(job, path):
    if not path.is_file():
        return f"; no JUnit report at {job.junit_path}"
    try:
        rows = parse_junit(path)
    except ReportError as exc:
        return f"; {exc}"
    TestResult.objects.bulk_create(TestResult(job=job, **row) for row in rows)
    failed = sum(1 for row in rows if row["outcome"] in ("failed", "error"))
    return f"; {len(rows)} tests, {failed} failed"
