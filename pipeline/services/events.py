"""Append an Event and publish it to the radiators once the transaction commits."""

from functools import partial

from django.db import transaction


def _scope(subject):
    """Repository / build / job foreign keys for whatever the event is about."""
    from pipeline.models import Build, Job, Repository

    if isinstance(subject, Job):
        build = subject.build
        return {"repository_id": build.repository_id, "build_id": build.pk, "job_id": subject.pk,
                "train_id": build.train_id}
    if isinstance(subject, Build):
        return {"repository_id": subject.repository_id, "build_id": subject.pk,
                "train_id": subject.train_id}
    if isinstance(subject, Repository):
        return {"repository_id": subject.pk}
    scope = getattr(subject, "event_scope", None)
    return scope() if callable(scope) else {}


def repository_name_at_hand(subject):
    """The subject's repository name when it is loaded already (a job with its build and
    repository, as a worker reads it; a build or train with its repository): then
    publishing needs no query. None: publish reads it."""
    from pipeline.models import Build, DeployTrain, Job, Repository

    if isinstance(subject, Job):
        if not Job.build.is_cached(subject):
            return None
        subject = subject.build
    if isinstance(subject, (Build, DeployTrain)):
        if not type(subject).repository.is_cached(subject):
            return None
        subject = subject.repository
    return subject.name if isinstance(subject, Repository) else None


def record_event(kind, *, subject=None, old="", new="", actor=None, message="", data=None):
    """`old` and `new` are statuses (short words); anything else goes in `data`."""
    from pipeline.models import Event

    if len(old or "") > 30 or len(new or "") > 30:
        raise ValueError(f"{kind}: old/new hold statuses, not {old!r} / {new!r}")
    from radiators.events import publish

    scope = _scope(subject)
    event = Event.objects.create(
        kind=kind,
        old=old or "",
        new=new or "",
        actor=actor if getattr(actor, "is_authenticated", False) else None,
        message=message,
        data=data or {},
        **scope,
    )
    transaction.on_commit(partial(publish, event.pk, kind=kind,
                                  repository_id=scope.get("repository_id"),
                                  repository_name=repository_name_at_hand(subject),
                                  on_train=scope.get("train_id") is not None))
    return event
