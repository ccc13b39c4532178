"""Moving a train on: `advance` looks at the train and its jobs and takes the next step."""

import logging

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from pipeline.models import (
    Approval,
    Build,
    DeployTrain,
    Job,
)
from pipeline.services.events import record_event
from pipeline.services.train_locks import blocking_lock, describe_lock
from pipeline.spec import Spec
from pipeline.statemachine import transition

from ._base import PRODUCTION, T, _production_nodes, train_authors

logger = logging.getLogger(__name__)


def enqueue_advance(train_id):
    """Ask a worker to advance the train; a broker that is away loses nothing: the reaper
    advances every active train each round."""
    from pipeline.services.builds import BROKER_ERRORS
    from pipeline.tasks import advance_train

    try:
        advance_train.delay(train_id)
    except BROKER_ERRORS:
        logger.warning("could not queue advance of train #%s; the reaper will", train_id)

def advance_active():
    """The reaper's round: every active train takes its next step if it has one."""
    for train_id in DeployTrain.objects.active().values_list("pk", flat=True):
        advance(train_id)

def advance_active_of(repository):
    for train_id in (DeployTrain.objects.active().filter(repository=repository)
                     .values_list("pk", flat=True)):
        advance(train_id)

def advance(train_id):
    """Take the train's next step, if it has one now. Returns the train (or None)."""
    with transaction.atomic():
        train = (DeployTrain.objects.select_for_update(no_key=True).select_related("repository")
                 .filter(pk=train_id).first())
        if train is None or train.status not in DeployTrain.ACTIVE:
            return train
        step = _STEPS[train.status]
        jobs_to_queue = step(train)
        if jobs_to_queue:
            from pipeline.services.builds import enqueue_jobs

            ids = [job.pk for job in jobs_to_queue]
            transaction.on_commit(lambda: enqueue_jobs(ids))
    return train

def _environments(train):
    if train.kind == DeployTrain.Kind.ROLLBACK:
        return []
    return list(Spec.from_dict(train.build.spec).environments)

def _spec(train):
    return Spec.from_dict(train.build.spec)

def _step_scheduled(train):
    if train.kind == DeployTrain.Kind.ROLLBACK:
        return _enter_production(train)
    environments = _environments(train)
    if environments:
        return _enter_environment(train, environments[0])
    return _ask_authors(train)

def _enter_environment(train, environment):
    """Move into `environment` (DEPLOYING_LOWER) and deploy there unless it is locked."""
    if train.status != T.DEPLOYING_LOWER or train.environment != environment:
        transition(train, T.DEPLOYING_LOWER, environment=environment,
                   message=f"deploying to {environment}")
    return _step_deploying_lower(train)

def _step_deploying_lower(train):
    environment = train.environment
    job = _job(train, f"deploy-{environment}")
    if job is None:
        if _waits_for_lock(train, environment):
            return []
        nodes = _environment_nodes(train.repository, environment)
        if not nodes:
            return _fail(train, f"{train.repository.name} has no enabled {environment} node: "
                                f"add one (environment {environment}) in the admin")
        return [_create_job(train, f"deploy-{environment}", "train_deploy", environment,
                            timeout=settings.TRAINYARD["DEPLOY_TIMEOUT"])]
    if job.status in Job.ACTIVE:
        return []
    if job.status != Job.Status.PASSED:
        return _fail(train, f"the deploy to {environment} {job.status}: {job.message}")
    spec = _spec(train)
    if spec.acceptance is None:
        return _after_environment(train, environment)
    url = _environment_nodes(train.repository, environment)[0].url
    transition(train, T.TESTING, message=f"acceptance tests against {environment} ({url})")
    acceptance = spec.acceptance
    return [_create_job(train, f"acceptance-{environment}", "acceptance", environment,
                        command=acceptance.argv, junit=acceptance.junit, target_url=url,
                        timeout=acceptance.timeout or settings.TRAINYARD["CHECK_TIMEOUT"])]

def _step_testing(train):
    environment = train.environment
    job = _job(train, f"acceptance-{environment}")
    if job is None or job.status in Job.ACTIVE:
        return []
    if job.status != Job.Status.PASSED:
        return _fail(train, f"acceptance tests failed in {environment}: {job.message}")
    return _after_environment(train, environment)

def _after_environment(train, environment):
    environments = _environments(train)
    index = environments.index(environment) if environment in environments else len(environments)
    if index + 1 < len(environments):
        transition(train, T.TESTING, message=f"{environment} passed")  # no-op unless deploying
        return _enter_environment(train, environments[index + 1])
    return _ask_authors(train)

def _ask_authors(train):
    """Every lower environment passed: ask the authors (or go on if forced or if no
    author maps to a user)."""
    authors = train_authors(train)
    names = ", ".join(user.get_username() for user in authors)
    message = (f"waiting for {names} to say !good" if authors
               else "no author maps to a user: nobody to ask")
    transition(train, T.AWAITING_APPROVAL, acceptance_passed=True, environment="",
               approval_requested_at=timezone.now(), message=message)
    if authors:
        from pipeline.services.notifications import ask_authors

        ask_authors(train, authors)
    return _step_awaiting_approval(train)

def _step_awaiting_approval(train):
    authors = train_authors(train)
    answers = dict(Approval.objects.filter(train=train).values_list("user_id", "verdict"))
    pending = [user for user in authors if answers.get(user.pk) != Approval.Verdict.GOOD]
    if train.forced_by_id or not pending:
        return _enter_production(train)
    names = ", ".join(user.get_username() for user in pending)
    message = f"waiting for {names} to say !good"
    if train.message != message:
        DeployTrain.objects.filter(pk=train.pk).update(message=message)
        train.message = message
    return []

def _enter_production(train):
    if _waits_for_lock(train, PRODUCTION):
        return []
    if not _production_nodes(train.repository).exists():
        return _fail(train, f"{train.repository.name} has no enabled production node")
    how = (f"forced by {train.forced_by.get_username()}: {train.force_reason}"
           if train.forced_by_id and train.kind == DeployTrain.Kind.TRAIN else "")
    transition(train, T.DEPLOYING_PRODUCTION, environment=PRODUCTION,
               message="deploying to production" + (f" ({how})" if how else ""),
               actor=train.forced_by if how else None)
    return _step_deploying_production(train)

def _step_deploying_production(train):
    job = _job(train, PRODUCTION)
    if job is None:
        return [_create_job(train, PRODUCTION, "production", PRODUCTION,
                            timeout=settings.TRAINYARD["PRODUCTION_TIMEOUT"])]
    if job.status in Job.ACTIVE:
        return []
    if job.status == Job.Status.PASSED:
        _end(train, T.DEPLOYED, job.message or "deployed to production")
    else:
        _end(train, T.FAILED, f"production {job.status}: {job.message}")
    return []


_STEPS = {
    T.SCHEDULED: _step_scheduled,
    T.DEPLOYING_LOWER: _step_deploying_lower,
    T.TESTING: _step_testing,
    T.AWAITING_APPROVAL: _step_awaiting_approval,
    T.DEPLOYING_PRODUCTION: _step_deploying_production,
}


def _waits_for_lock(train, environment):
    """True (and the train says so) while `environment` or the repository is locked."""
    if train.override_lock:
        return False
    lock = blocking_lock(train.repository, environment)
    if lock is None:
        return False
    message = f"waiting at {environment}: {describe_lock(lock)}"
    if train.message != message:
        DeployTrain.objects.filter(pk=train.pk).update(message=message, environment=environment)
        train.message, train.environment = message, environment
        record_event("train.waiting", subject=train, new=train.status, message=message,
                     data={"lock": lock.pk, "environment": environment})
    return True

def _environment_nodes(repository, environment):
    from nodes.models import Node

    return list(Node.objects.usable_by(repository).filter(environment=environment, enabled=True)
                .order_by("name"))

def _job(train, name):
    return Job.objects.filter(build=train.build, name=name).first()

def _create_job(train, name, stage, environment, *, command=(), junit="", target_url="",
                timeout):
    return Job.objects.create(build=train.build, name=name, stage=stage, command=list(command),
                              junit_path=junit, timeout=timeout, environment=environment,
                              target_url=target_url)

def _fail(train, message):
    _end(train, T.FAILED, message)
    return []

def _end(train, status, message, *, actor=None):
    """End the train and its build (jobs still queued are cancelled)."""
    from pipeline.services.builds import end_build

    if not transition(train, status, finished_at=timezone.now(), message=message[:2000],
                      actor=actor):
        return False
    build = train.build
    if build is not None and build.status in Build.ACTIVE:
        for job in Job.objects.filter(build=build, status=Job.Status.QUEUED):
            transition(job, Job.Status.CANCELLED, finished_at=timezone.now(),
                       message=f"the train was {status}")
        outcome = {T.DEPLOYED: Build.Status.PASSED, T.FAILED: Build.Status.FAILED}.get(
            status, Build.Status.CANCELLED)
        end_build(build, outcome, message[:2000])
    from pipeline.services.notifications import train_ended

    train_ended(train)
    return True
