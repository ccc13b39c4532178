"""Deploy a build's SHA to a node and record it: the Deployment row, the node's current
release, events. The protocol itself (nodes/deploy/) knows nothing of the database.

Running a deploy task twice is harmless. `run_deploy_job` is the one claim point: in one
short transaction it locks the build's row, then the job's (the order every path takes:
build, job, deployment, node), returns unless the job is queued and its build running,
holds a node and moves the job QUEUED -> RUNNING. Only the copy whose claim commits
deploys; the others find the job running and return. The remote work runs after that
commit, outside any transaction, with a heartbeat. A worker that dies mid-deploy goes
silent; the reaper then calls `recover_interrupted_deploy`, which frees the node.
"""

import logging
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from nodes import deploy as protocol
from nodes.models import Deployment, Node
from nodes.services.allocation import allocate_node, mark_unhealthy, why_no_node
from nodes.services.connections import get_transport
from nodes.services.health import check_node
from nodes.transports import TransportError
from pipeline.models import Build, Event, Job
from pipeline.services.builds import end_build, finish_build_if_done
from pipeline.services.events import record_event
from pipeline.services.heartbeat import Heartbeat
from pipeline.services.logs import LogWriter
from pipeline.statemachine import transition

logger = logging.getLogger(__name__)
# How every "why this deploy waits" message starts (allocation.why_no_node).
LOCAL_NODE_PATH = "/usr/local/bin:/usr/bin:/bin"
WAITING_FOR_NODE = "no usable branch node"


def run_deploy_job(job):
    """Claim the deploy job, deploy the build's SHA to a branch node, end the job and move
    the build on. None when this copy has nothing to do: another copy claimed the job, its
    build ended, or no node is usable (the job stays queued and says why, until it has
    waited TRAINYARD_NODE_WAIT_TIMEOUT: then it and its build end in error with the reason)."""
    node = _claim(job)
    if node is None:
        return None
    build = job.build
    log = LogWriter(job)
    try:
        with Heartbeat(job.pk, claimed=True):
            deployment = deploy_build(build, node, build.spec["deploy"], log=log.write,
                                      on_tick=log.tick)
    except Exception as exc:
        # A bug in Trainyard mid-deploy: end the job, and leave the node usable.
        logger.exception("deploy job %s crashed", job.pk)
        message = f"Trainyard failed while deploying: {exc!r}"[:2000]
        log.write(f"\n[trainyard: {message}]\n")
        recover_interrupted_deploy(job, message)
        _end(job, Job.Status.ERROR, message=message)
    else:
        _store_outcome(job, node, deployment)
    finally:
        log.flush()
    finish_build_if_done(build.pk)
    return job


def _claim(job):
    """QUEUED -> RUNNING with a node held, in one short transaction. Returns the node, or
    None when this copy is not the one to deploy."""
    with transaction.atomic():
        build_status = (Build.objects.select_for_update(no_key=True).filter(pk=job.build_id)
                        .values_list("status", flat=True).first())
        attempt = (Job.objects.select_for_update(no_key=True)
                   .filter(pk=job.pk, status=Job.Status.QUEUED)
                   .values_list("attempt", flat=True).first())
        if attempt is None:
            return None  # another copy claimed it, or it ended
        if build_status != Build.Status.RUNNING:
            if build_status in Build.ENDED:
                transition(job, Job.Status.CANCELLED, finished_at=timezone.now(),
                           message="its build had already ended")
            return None
        node = allocate_node(job.build)
        if node is None:
            _wait_or_give_up(job, attempt)
            return None
        Build.objects.filter(pk=job.build_id, message__startswith=WAITING_FOR_NODE).update(message="")
        job.attempt, now = attempt, timezone.now()
        if not transition(job, Job.Status.RUNNING, started_at=now, heartbeat_at=now,
                          message=f"deploying to {node.name}"):
            transaction.set_rollback(True)  # cannot happen under the lock; hold nothing
            return None
    return node


def _wait_or_give_up(job, attempt):
    """No node for `job`: say why (on the job, its build and an Event, whenever the reason
    changes), or, once it has waited NODE_WAIT_TIMEOUT, end the job and its build in error
    with that reason. Runs under _claim's locks, so copies of the task take turns."""
    reason = why_no_node(job.build)
    limit = settings.TRAINYARD["NODE_WAIT_TIMEOUT"]
    since = (Event.objects.filter(kind="job.waiting", job=job.pk, data__attempt=attempt)
             .order_by("created_at").values_list("created_at", flat=True).first())
    if since is not None and timezone.now() - since >= timedelta(seconds=limit):
        message = f"{reason} (gave up after {_duration(limit)}: TRAINYARD_NODE_WAIT_TIMEOUT)"
        job.attempt = attempt
        if _end(job, Job.Status.ERROR, message=message):
            end_build(job.build, Build.Status.ERROR, message)
        return
    _say_waiting(job, reason, attempt)


def _say_waiting(job, reason, attempt):
    """The job, its build (shown on the radiator's row) and an Event say why it waits."""
    if Job.objects.filter(pk=job.pk, status=Job.Status.QUEUED).exclude(message=reason).update(
            message=reason):
        (Build.objects.filter(pk=job.build_id)
         .filter(Q(message="") | Q(message__startswith=WAITING_FOR_NODE)).update(message=reason))
        record_event("job.waiting", subject=job, new="queued", message=reason,
                     data={"attempt": attempt})


def _duration(seconds):
    return f"{seconds // 60} min" if seconds >= 120 else f"{seconds} s"


def _end(job, status, **fields):
    """Only the attempt this copy claimed: a copy the reaper gave up on ends nothing."""
    return transition(job, status, where={"attempt": job.attempt}, finished_at=timezone.now(),
                      **fields)


def _store_outcome(job, node, deployment):
    if deployment.status != Deployment.Status.SUCCEEDED:
        _end(job, Job.Status.FAILED,
             message=f"deploy to {node.name} failed: {deployment.message}"[:2000])
        return
    with transaction.atomic():
        if _end(job, Job.Status.PASSED, message=f"deployed to {node.name}: {node.url}"):
            Build.objects.filter(pk=job.build_id).update(deploy_url=node.url)
            job.build.deploy_url = node.url


def recover_interrupted_deploy(job, reason):
    """The worker deploying `job` stopped (its heartbeat went silent): end the build's
    running Deployment record, free the node the build holds, say so, and check the node's
    health (unreachable: it leaves the pool) once this commits.

    Safe to call twice, and inside the caller's transaction (the health check, remote work,
    waits for the commit). `current` on the node needs no repair: by the protocol's
    guarantees it is the release that was live before (killed before the switch) or the
    new one, complete (killed after it). The next deploy inspects it and restarts that
    release or deploys again, clearing a half-made release folder first.
    """
    message = f"interrupted: {reason}"
    touched = set()
    with transaction.atomic():
        for deployment in Deployment.objects.active().filter(build=job.build_id):
            if transition(deployment, Deployment.Status.FAILED, finished_at=timezone.now(),
                          message=message):
                touched.add(deployment.node_id)
        # A production rollout drains each node it deploys: put back the ones it left.
        Node.objects.filter(pk__in=touched, environment=Node.Environment.PRODUCTION,
                            draining=True).update(draining=False)
        for node in Node.objects.select_for_update(no_key=True).filter(held_by=job.build_id):
            Node.objects.filter(pk=node.pk).update(held_by=None)
            record_event("node.released", subject=node, data={"build": job.build_id},
                         message=f"{node.name} is free again: the deploy of build "
                                 f"#{job.build_id} was {message}")
            touched.add(node.pk)
        if touched:
            transaction.on_commit(lambda: _check_nodes(touched), robust=True)


def _check_nodes(node_ids):
    for node in Node.objects.filter(pk__in=node_ids):
        _after_failure(node)


def archive_for(build):
    """The release archive of the build's SHA, made once per host from this host's mirror
    (fetched first if it does not have the SHA yet: any worker host may deploy)."""
    from pipeline.services.git import ensure_commit

    folder = Path(settings.TRAINYARD["WORKSPACE_DIR"]) / "archives" / build.repository.name
    path = folder / f"{build.sha}.tar.gz"
    if path.exists():
        return path, protocol.file_sha256(path)
    return protocol.make_archive(ensure_commit(build.repository, build.sha), build.sha, folder)


def step_environment(node, build):
    """What install and start see. A local node gets a whole environment built from
    scratch (no Trainyard secrets); an SSH node keeps its login environment plus these."""
    env = {
        "HOST": node.host,
        "PORT": str(node.app_port),
        "APP_STATE_DIR": f"{node.base_path.rstrip('/')}/shared/state",
        "TRAINYARD_SHA": build.sha,
        "TRAINYARD_BRANCH": build.branch,
        "TRAINYARD_NODE": node.name,
    }
    if node.transport == Node.Transport.LOCAL:
        # The system's tools, never Trainyard's virtualenv: an app that imported Trainyard's
        # packages here would pass on a local node and fail on a real one.
        env.update({"PATH": LOCAL_NODE_PATH, "HOME": f"{node.base_path.rstrip('/')}/shared",
                    "LANG": "C.UTF-8"})
    env.update({str(k): str(v) for k, v in (node.env or {}).items()})
    return env


def deploy_build(build, node, deploy_spec, *, log, on_tick=None,
                 trigger=Deployment.Trigger.BRANCH):
    """Deploy `build.sha` to `node` (a branch node the build holds, or a node of a train's
    environment). Returns the Deployment."""
    from pipeline.spec import Spec

    steps = protocol.DeploySteps.from_spec(Spec.from_dict({"checks": {}, "deploy": deploy_spec}).deploy)
    try:
        deployment = Deployment.objects.create(node=node, build=build, sha=build.sha,
                                               branch=build.branch, previous_sha=node.current_sha,
                                               trigger=trigger)
    except IntegrityError:
        log(f"{node.name} is already being deployed to\n")
        return Deployment(node=node, sha=build.sha, status=Deployment.Status.FAILED,
                          message=f"{node.name} is already being deployed to")
    record_event("deployment.started", subject=deployment, new="running",
                 message=f"deploying {build.sha[:10]} ({build.branch}) to {node.name}")
    lines = []

    def log_line(line):
        lines.append(line)
        log(line + "\n")

    result = _run_protocol(build, node, steps, log_line, on_tick)
    _record(deployment, node, build, steps, result, "\n".join(lines))
    return deployment


def _run_protocol(build, node, steps, log_line, on_tick):
    try:
        archive, checksum = archive_for(build)
        with get_transport(node) as transport:
            return protocol.deploy_release(
                transport, node.base_path, build.sha, archive, checksum, steps,
                env=step_environment(node, build), log=log_line, host=node.host,
                port=node.app_port, on_tick=on_tick)
    except (TransportError, protocol.DeployError, OSError) as exc:
        log_line(f"!! {exc}")
        return protocol.DeployResult(ok=False, message=str(exc), sha=build.sha)


def _record(deployment, node, build, steps, result, log_text):
    now = timezone.now()
    if result.ok:
        url = protocol.health_url(steps.health, node.host, node.app_port) if steps.health else ""
        Node.objects.filter(pk=node.pk).update(current_sha=build.sha, current_branch=build.branch,
                                               last_changed_at=now, health_url=url)
        status = Deployment.Status.SUCCEEDED
    else:
        status = Deployment.Status.ROLLED_BACK if result.rolled_back else Deployment.Status.FAILED
        _after_failure(node)
    # What proved the release live (or that nothing could) stays with the record.
    message = f"{result.message}. {result.live}" if result.live else result.message
    transition(deployment, status, finished_at=now, message=message[:2000], log=log_text)


def _after_failure(node):
    """A failed deploy may mean a dead node: check it now, and if it is down, take it out
    of the pool and free its branch (the next build gets another node)."""
    node.refresh_from_db()
    if check_node(node) == Node.Health.UNHEALTHY:
        mark_unhealthy(node, node.health_message)
