"""A train's deploys: every node of a lower environment, and the production rollout
(off-cycle nodes first, then batches, each drained, switched, health-checked, put back).

Each is a job of the train's build, so a worker that dies mid-way is handled like any
other job (the reaper ends its Deployment records and runs it again). A node this train's
build already deployed successfully is skipped when the job runs again: no node is
deployed twice by one train.
"""

import logging
from functools import partial

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from nodes import deploy as protocol
from nodes.models import Deployment, Node
from nodes.services.connections import get_transport
from nodes.services.deploys import (
    archive_for,
    deploy_build,
    recover_interrupted_deploy,
    step_environment,
)
from pipeline.models import Build, DeployTrain, Job
from pipeline.services.builds import finish_build_if_done
from pipeline.services.events import record_event
from pipeline.services.heartbeat import Heartbeat
from pipeline.services.logs import LogWriter
from pipeline.statemachine import transition

logger = logging.getLogger(__name__)
TRIGGERS = {DeployTrain.Kind.ROLLBACK: Deployment.Trigger.ROLLBACK}


def run_train_job(job):
    """Claim a train's deploy job (stage `train_deploy` or `production`), run it, end it,
    and let the train move on. None when this copy has nothing to do."""
    if not _claim(job):
        return None
    build = job.build
    log = LogWriter(job)
    try:
        with Heartbeat(job.pk):
            work = _production if job.stage == "production" else _lower_environment
            ok, message = work(job, build, log)
    except Exception as exc:
        logger.exception("train job %s crashed", job.pk)
        message = f"Trainyard failed while deploying: {exc!r}"[:2000]
        log.write(f"\n[trainyard: {message}]\n")
        recover_interrupted_deploy(job, message)
        _end(job, Job.Status.ERROR, message=message)
    else:
        _end(job, Job.Status.PASSED if ok else Job.Status.FAILED, message=message[:2000])
    finally:
        log.flush()
    finish_build_if_done(build.pk)
    return job


def _claim(job):
    with transaction.atomic():
        build_status = (Build.objects.select_for_update(no_key=True).filter(pk=job.build_id)
                        .values_list("status", flat=True).first())
        attempt = (Job.objects.select_for_update(no_key=True)
                   .filter(pk=job.pk, status=Job.Status.QUEUED)
                   .values_list("attempt", flat=True).first())
        if attempt is None:
            return False
        if build_status != Build.Status.RUNNING:
            transition(job, Job.Status.CANCELLED, finished_at=timezone.now(),
                       message="its train had already ended")
            return False
        job.attempt, now = attempt, timezone.now()
        return transition(job, Job.Status.RUNNING, started_at=now, heartbeat_at=now,
                          message=f"deploying to {job.environment}")


def _end(job, status, **fields):
    return transition(job, status, where={"attempt": job.attempt}, finished_at=timezone.now(),
                      **fields)


def _already_deployed(build):
    """Nodes this build deployed successfully and that still run its SHA."""
    return set(Deployment.objects.filter(build=build, status=Deployment.Status.SUCCEEDED,
                                         node__current_sha=build.sha)
               .values_list("node_id", flat=True))


def _lower_environment(job, build, log):
    """Deploy to every enabled node of the job's environment, one after the other."""
    nodes = list(Node.objects.usable_by(build.repository_id)
                 .filter(environment=job.environment, enabled=True).order_by("name"))
    if not nodes:
        return False, f"no enabled {job.environment} node"
    done = _already_deployed(build)
    trigger = TRIGGERS.get(build.train.kind, Deployment.Trigger.TRAIN)
    for node in nodes:
        if node.pk in done:
            log.write(f"{node.name} already runs {build.sha[:10]} (deployed by this train)\n")
            continue
        log.write(f"== {node.name} ({node.url})\n")
        deployment = deploy_build(build, node, build.spec["deploy"], log=log.write,
                                  on_tick=log.tick, trigger=trigger)
        if deployment.status != Deployment.Status.SUCCEEDED:
            return False, f"deploy to {node.name} failed: {deployment.message}"
    names = ", ".join(node.name for node in nodes)
    return True, f"{build.sha[:10]} live on {names}"


def _production(job, build, log):
    """The production rollout through nodes.deploy.rollout, recorded node by node. Its
    callbacks run in this thread (the rollout's own threads only talk to nodes)."""
    from nodes.deploy.rollout import RolloutTarget, rollout
    from pipeline.spec import Spec

    train = build.train
    nodes = list(Node.objects.usable_by(build.repository_id)
                 .filter(environment=Node.Environment.PRODUCTION, enabled=True)
                 .order_by("-off_cycle", "name"))
    if not nodes:
        return False, "no enabled production node"
    done = _already_deployed(build)
    for node in nodes:
        if node.pk in done:
            log.write(f"{node.name} already runs {build.sha[:10]} (deployed by this train)\n")
    todo = [node for node in nodes if node.pk not in done]
    if not todo:
        return True, f"{build.sha[:10]} live on {len(nodes)} production nodes"
    steps = protocol.DeploySteps.from_spec(
        Spec.from_dict({"checks": {}, "deploy": build.spec["deploy"]}).deploy)
    archive, checksum = archive_for(build)
    trigger = TRIGGERS.get(train.kind, Deployment.Trigger.TRAIN)
    by_pk = {node.pk: node for node in todo}
    deployments = {}

    def on_node_start(target):
        node = by_pk[target.key]
        deployments[node.pk] = Deployment.objects.create(
            node=node, build=build, sha=build.sha, branch=build.branch, trigger=trigger,
            previous_sha=node.current_sha)
        Node.objects.filter(pk=node.pk).update(draining=True)
        record_event("node.draining", subject=node, new="draining",
                     message=f"{node.name} drained for {build.sha[:10]} (train #{train.pk})")

    def on_node_done(target, outcome):
        # Recorded as each node finishes (and again if it is rolled back later): a worker
        # killed mid-rollout leaves the nodes that are done recorded as done, and the job's
        # next attempt skips them.
        _record_node(outcome, by_pk[target.key], deployments.get(target.key), build, steps)

    targets = [RolloutTarget(key=node.pk, name=node.name, transport=partial(get_transport, node),
                             base=node.base_path, host=node.host, port=node.app_port,
                             env=step_environment(node, build), off_cycle=node.off_cycle)
               for node in todo]
    result = rollout(targets, build.sha, archive, checksum, steps,
                     batch_size=settings.TRAINYARD["TRAIN_BATCH_SIZE"],
                     log=lambda line: log.write(line + "\n"),
                     on_node_start=on_node_start, on_node_done=on_node_done, on_tick=log.tick)
    return result.ok, result.message


def _record_node(outcome, node, deployment, build, steps):
    """The node's Deployment and current release as the rollout reports it."""
    now = timezone.now()
    Node.objects.filter(pk=node.pk).update(draining=False)
    if outcome.rolled_back:
        Node.objects.filter(pk=node.pk).update(current_sha=outcome.previous_sha or "",
                                               last_changed_at=now)
        status = Deployment.Status.ROLLED_BACK
    elif outcome.ok:
        url = protocol.health_url(steps.health, node.host, node.app_port) if steps.health else ""
        Node.objects.filter(pk=node.pk).update(
            current_sha=build.sha, current_branch=build.branch, last_changed_at=now,
            health_url=url)
        status = Deployment.Status.SUCCEEDED
    else:
        status = Deployment.Status.FAILED
    if deployment is not None:
        transition(deployment, status, finished_at=now, message=outcome.message[:2000],
                   log=outcome.log)
