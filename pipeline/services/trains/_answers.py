"""The people: authors' answers, a release manager's force or cancel, reminders."""

from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from pipeline.models import (
    Approval,
    DeployTrain,
    Job,
)
from pipeline.services.events import record_event
from pipeline.services.train_locks import blocking_lock, describe_lock
from pipeline.statemachine import transition

from ._base import PRODUCTION, T, TrainError, is_release_manager, train_authors
from ._drive import _end, _step_deploying_production, advance
from ._start import _open_build


def answer(train, user, verdict, reason="", *, via="web"):
    """`user`'s answer (Approval.Verdict.GOOD / BAD) to an active train: only its authors
    or a release manager; "bad" needs a reason and vetoes it. Returns the Approval."""
    reason = (reason or "").strip()
    if verdict not in Approval.Verdict.values:
        raise TrainError(f"an answer is good or bad, not {verdict!r}")
    if verdict == Approval.Verdict.BAD and not reason:
        raise TrainError("a veto needs a reason: !bad <reason>")
    authors = train_authors(train)
    if user not in authors and not is_release_manager(user):
        names = ", ".join(a.get_username() for a in authors) or "nobody"
        raise TrainError(f"only the train's authors ({names}) or a release manager answer it")
    for attempt in range(2):
        try:
            with transaction.atomic():
                locked = DeployTrain.objects.select_for_update(no_key=True).get(pk=train.pk)
                if locked.status not in (T.SCHEDULED, T.DEPLOYING_LOWER, T.TESTING,
                                         T.AWAITING_APPROVAL):
                    raise TrainError(f"train #{train.pk} is {locked.get_status_display()}: "
                                     "answers are closed")
                approval, _ = Approval.objects.update_or_create(
                    train=locked, user=user, defaults={"verdict": verdict, "reason": reason,
                                                       "via": via})
                said = f"!{verdict}" + (f" {reason}" if reason else "")
                record_event("train.answer", subject=locked, new=verdict, actor=user,
                             message=f"{user.get_username()} says {said}",
                             data={"verdict": verdict})
                if verdict == Approval.Verdict.BAD:
                    _end(locked, T.VETOED, f"vetoed by {user.get_username()}: {reason}",
                         actor=user)
            if verdict == Approval.Verdict.GOOD:
                advance(train.pk)  # the answer's effect is visible when the door answers
            return approval
        except IntegrityError:
            if attempt:  # the same person's two clicks raced: the second one updates
                raise
    return None


def force(train, user, reason, *, override_veto=False, override_lock=False, via="web"):
    """A release manager skips the waiting for approvals (the door checked the permission).
    Given before the authors are asked, it takes effect when they would be. A veto stands
    unless `override_veto`; a lock holds unless `override_lock`. Returns the train."""
    reason = (reason or "").strip()
    if not reason:
        raise TrainError("forcing a train needs a reason: !force <reason>")
    with transaction.atomic():
        locked = DeployTrain.objects.select_for_update(no_key=True).select_related("repository").get(
            pk=train.pk)
        if locked.status == T.VETOED:
            veto = locked.approvals.filter(verdict=Approval.Verdict.BAD).select_related(
                "user").first()
            said = f"vetoed by {veto.user.get_username()} ({veto.reason})" if veto else "vetoed"
            if not override_veto:
                raise TrainError(f"train #{locked.pk} was {said}: a veto stands unless "
                                 "--override-veto")
            if not locked.acceptance_passed:
                raise TrainError(f"train #{locked.pk} was {said} before its acceptance tests "
                                 "passed: start a new train")
            if (not override_lock
                    and (lock := blocking_lock(locked.repository, PRODUCTION)) is not None):
                raise TrainError(f"production: {describe_lock(lock)}; pass --override-lock")
        elif locked.status not in DeployTrain.ACTIVE:
            raise TrainError(f"train #{locked.pk} is {locked.get_status_display()}")
        elif locked.status == T.DEPLOYING_PRODUCTION:
            raise TrainError(f"train #{locked.pk} is already deploying to production")
        DeployTrain.objects.filter(pk=locked.pk).update(
            forced_by=user, force_reason=reason, override_veto=override_veto,
            override_lock=override_lock or locked.override_lock)
        locked.refresh_from_db()
        flags = " ".join(flag for flag, on in (("--override-veto", override_veto),
                                               ("--override-lock", override_lock)) if on)
        record_event("train.forced", subject=locked, new=locked.status, actor=user,
                     message=f"{user.get_username()} forced train #{locked.pk}"
                             f"{' ' + flags if flags else ''}: {reason}")
        if locked.status == T.VETOED:
            _reopen_for_production(locked, user, via)
    advance(train.pk)
    locked.refresh_from_db()
    return locked


def _reopen_for_production(train, user, via):
    """Force over a veto: production runs in a new build (the vetoed one has ended)."""
    spec = train.build.spec
    train.__dict__.pop("build", None)
    _open_build(train, spec, user, via)
    transition(train, T.DEPLOYING_PRODUCTION, environment=PRODUCTION, finished_at=None,
               actor=user, message=f"deploying to production over the veto (forced by "
                                   f"{user.get_username()}: {train.force_reason})")
    _step_deploying_production(train)
    from pipeline.services.builds import enqueue_jobs

    ids = list(Job.objects.filter(build=train.build, status=Job.Status.QUEUED)
               .values_list("pk", flat=True))
    transaction.on_commit(lambda: enqueue_jobs(ids))


def cancel(train, user, reason):
    """Stop an active train before production (a release manager)."""
    with transaction.atomic():
        locked = DeployTrain.objects.select_for_update(no_key=True).get(pk=train.pk)
        if locked.status == T.DEPLOYING_PRODUCTION:
            raise TrainError(f"train #{locked.pk} is deploying to production: it cannot be "
                             "cancelled half way")
        if not _end(locked, T.CANCELLED, f"cancelled by {user.get_username()}: {reason}",
                    actor=user):
            raise TrainError(f"train #{locked.pk} is {locked.get_status_display()}")
    return locked


def current_train(repository):
    """The active train, else the latest one, else None."""
    trains = DeployTrain.objects.filter(repository=repository)
    return trains.active().first() or trains.order_by("-id").first()


def remind_authors(now=None):
    """Authors who have not answered a train waiting longer than APPROVAL_REMINDER since
    it asked (or last reminded) get a reminder. Returns how many trains reminded."""
    from pipeline.services.notifications import remind

    now = now or timezone.now()
    due = now - timedelta(seconds=settings.TRAINYARD["APPROVAL_REMINDER"])
    reminded = 0
    for train in DeployTrain.objects.filter(status=T.AWAITING_APPROVAL, forced_by=None).filter(
            Q(last_reminder_at__lt=due) | Q(last_reminder_at=None, approval_requested_at__lt=due)):
        # Claimed with a conditional update: two beat rounds never remind twice.
        claimed = DeployTrain.objects.filter(
            pk=train.pk, last_reminder_at=train.last_reminder_at).update(last_reminder_at=now)
        if not claimed:
            continue
        answered = set(train.approvals.values_list("user_id", flat=True))
        pending = [user for user in train_authors(train) if user.pk not in answered]
        if pending:
            remind(train, pending)
            reminded += 1
    return reminded
