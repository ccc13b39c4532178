"""Claims: "I'm on it" for a broken branch, shown on the wall beside the break instead
of a culprit's name. One open claim per branch (a partial unique constraint); claiming
again replaces it."""

from django.db import IntegrityError, transaction
from django.utils import timezone

from pipeline.models import Build
from pipeline.services.events import record_event
from radiators.models import Claim


class ClaimError(ValueError):
    pass


def claim(repository, branch, user, *, note=""):
    """`user` takes the break of `branch` (its latest red build). Returns the Claim."""
    build = (Build.objects.filter(repository=repository, branch=branch,
                                  status__in=("failed", "error")).order_by("-id").first())
    if build is None:
        raise ClaimError(f"{branch} has no red build to claim")
    for attempt in range(2):
        try:
            with transaction.atomic():
                Claim.objects.filter(repository=repository, branch=branch,
                                     released_at=None).update(released_at=timezone.now())
                made = Claim.objects.create(repository=repository, branch=branch, build=build,
                                            user=user, note=note)
                _record(repository, branch, user, "claimed", note)
                return made
        except IntegrityError:  # claimed at the same moment by someone else: take it over
            if attempt:
                raise
    return None


def release(repository, branch, user):
    with transaction.atomic():
        done = Claim.objects.filter(repository=repository, branch=branch,
                                    released_at=None).update(released_at=timezone.now())
        if not done:
            raise ClaimError(f"{branch} is not claimed")
        _record(repository, branch, user, "released", "")


def release_when_green(build):
    """A branch that is green again needs nobody on it: its open claim ends with the
    build that fixed it (called as the build ends, in its transaction)."""
    ended = Claim.objects.filter(repository_id=build.repository_id, branch=build.branch,
                                 released_at=None).update(released_at=timezone.now())
    if ended:
        record_event("radiator.claim", subject=build, new="released",
                     message=f"{build.branch} is green again (build #{build.pk}): claim released",
                     data={"branch": build.branch})
    return bool(ended)


def _record(repository, branch, user, what, note):
    # The event makes every open wall redraw (radiators listen to the event log).
    record_event("radiator.claim", subject=repository, new=what, actor=user,
                 message=f"{user.get_username()} {what} {branch}" + (f": {note}" if note else ""),
                 data={"branch": branch})
