"""The one writer of every status field.

`transition(obj, to)` moves a row from any state allowed to reach `to` with a single
conditional UPDATE (after reading the current status under a row lock when more than one
state may reach `to`); it returns False when another worker got there first. Each
successful move appends an Event, published to the radiators after commit.
"""

from django.db import transaction

from pipeline.services.events import record_event


class InvalidTransition(ValueError):
    pass


def sources_for(model, to):
    return [src for src, targets in model.TRANSITIONS.items() if to in targets]


def transition(obj, to, *, actor=None, note="", event_data=None, where=None, **fields):
    """Move `obj` to status `to` if its current state allows it. Returns True if it did.

    `where` adds conditions the row must still meet (e.g. `{"attempt": 2}`: a copy of a job
    that was given up on cannot end the run that replaced it).
    `obj` is refreshed in place with the new status and fields when the move succeeds.
    The Event's message is `note`, else the row's new `message` field.
    """
    model = type(obj)
    if to not in model.Status.values:
        raise InvalidTransition(f"{model.__name__} has no status {to!r}")
    sources = sources_for(model, to)
    if not sources:
        raise InvalidTransition(f"no {model.__name__} status can move to {to!r}")
    with transaction.atomic():
        if len(sources) == 1:
            # Only one status can move to `to`: the conditional UPDATE alone is the test, and
            # its row lock makes a racing mover wait and then find the status changed.
            old = str(sources[0])
        else:
            # NO KEY: a status is not a key, so rows referencing this one (events, jobs, log
            # chunks) can still be inserted meanwhile; FOR UPDATE made those wait, and a
            # worker holding one of them deadlocked with this mover (tests/test_row_locks.py).
            old = (
                model.objects.select_for_update(no_key=True)
                .filter(pk=obj.pk, status__in=sources, **(where or {}))
                .values_list("status", flat=True)
                .first()
            )
            if old is None:
                return False
        updated = (model.objects.filter(pk=obj.pk, status=old, **(where or {}))
                   .update(status=to, **fields))
        if not updated:
            return False
        obj.status = to
        for name, value in fields.items():
            setattr(obj, name, value)
        record_event(
            f"{model._meta.model_name}.status",
            subject=obj,
            old=old,
            new=to,
            actor=actor,
            message=note or fields.get("message", ""),
            data=event_data or {},
        )
    return True
