"""Locks and freeze windows: when trains must wait, and when ticks start none.

A lock (by a release manager, with a reason and an optional expiry) holds one environment
of a repository, or all of it. A train reaching a locked environment waits there and goes
on by itself once the lock is released or expires. A freeze window (weekly, e.g. Friday
16:00 to Monday 08:00) makes the schedule's ticks start no train.
"""

from datetime import timedelta

from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from pipeline.models import FreezeWindow, Lock
from pipeline.services.events import record_event

ENVIRONMENTS = ("staging", "preview", "preprod", "production")


class LockError(ValueError):
    pass


def open_locks(repository, now=None):
    now = now or timezone.now()
    return (Lock.objects.filter(repository=repository, released_at=None)
            .filter(Q(expires_at=None) | Q(expires_at__gt=now)).select_related("locked_by"))


def blocking_lock(repository, environment, now=None):
    """The lock that holds `environment` now (its own first, else the repository's)."""
    locks = {lock.environment: lock for lock in open_locks(repository, now)}
    return locks.get(environment) or locks.get("")


def describe_lock(lock):
    what = lock.environment or "every environment"
    who = lock.locked_by.get_username() if lock.locked_by_id else "someone"
    until = (f" until {timezone.localtime(lock.expires_at):%a %H:%M}" if lock.expires_at
             else "")
    return f"{what} locked by {who}{until}: {lock.reason}"


def lock(repository, user, reason, *, environment="", expires_at=None, via="web"):
    reason = (reason or "").strip()
    if not reason:
        raise LockError("a lock needs a reason")
    if environment and environment not in ENVIRONMENTS:
        raise LockError(f"no environment {environment!r}: one of {', '.join(ENVIRONMENTS)}, "
                        "or none for the whole repository")
    if expires_at is not None and expires_at <= timezone.now():
        raise LockError("the expiry is in the past")
    with transaction.atomic():
        # An expired lock is released first: it must not stand in the way of a new one.
        Lock.objects.filter(repository=repository, environment=environment, released_at=None,
                            expires_at__lte=timezone.now()).update(released_at=timezone.now())
        try:
            with transaction.atomic():
                new = Lock.objects.create(repository=repository, environment=environment,
                                          reason=reason, locked_by=user, expires_at=expires_at)
        except IntegrityError:
            current = Lock.objects.get(repository=repository, environment=environment,
                                       released_at=None)
            raise LockError(f"already {describe_lock(current)}") from None
        record_event("lock.created", subject=repository, new="locked", actor=user,
                     message=describe_lock(new), data={"environment": environment, "via": via})
    return new


def unlock(repository, user, *, environment="", via="web"):
    from pipeline.services.trains import advance_active_of

    with transaction.atomic():
        current = (Lock.objects.select_for_update(no_key=True)
                   .filter(repository=repository, environment=environment, released_at=None)
                   .first())
        if current is None:
            raise LockError(f"{environment or repository.name} is not locked")
        Lock.objects.filter(pk=current.pk).update(released_at=timezone.now(), released_by=user)
        record_event("lock.released", subject=repository, old="locked", new="unlocked",
                     actor=user, message=f"{environment or 'every environment'} unlocked by "
                                         f"{user.get_username()}",
                     data={"environment": environment, "via": via})
        transaction.on_commit(lambda: advance_active_of(repository))
    return current


def freeze_now(repository, now=None):
    """The freeze window open now for the repository (its own or a global one), described,
    or "" when none is."""
    now = timezone.localtime(now or timezone.now())
    windows = FreezeWindow.objects.filter(enabled=True).filter(
        Q(repository=repository) | Q(repository=None))
    for window in windows:
        if in_window(window, now):
            return (f"{window.name}: {_DAYS[window.start_weekday]} {window.start_time:%H:%M} to "
                    f"{_DAYS[window.end_weekday]} {window.end_time:%H:%M}")
    return ""


_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_WEEK = 7 * 24 * 60


def _minute_of_week(weekday, time):
    return weekday * 24 * 60 + time.hour * 60 + time.minute


def in_window(window, now):
    """Whether local time `now` falls in the weekly window (which may wrap past Sunday)."""
    start = _minute_of_week(window.start_weekday, window.start_time)
    end = _minute_of_week(window.end_weekday, window.end_time)
    at = _minute_of_week(now.weekday(), now.time())
    if start <= end:
        return start <= at < end
    return at >= start or at < end


def parse_expiry(text, now=None):
    """'90m', '2h', '3d' -> an aware datetime that far from now; '' -> None."""
    text = (text or "").strip().lower()
    if not text:
        return None
    units = {"m": "minutes", "h": "hours", "d": "days"}
    if len(text) < 2 or text[-1] not in units or not text[:-1].isdigit():
        raise LockError(f"an expiry looks like 90m, 2h or 3d, not {text!r}")
    return (now or timezone.now()) + timedelta(**{units[text[-1]]: int(text[:-1])})


