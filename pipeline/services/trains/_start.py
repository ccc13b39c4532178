"""Starting a train: the schedule's tick, a start by hand, a rollback; what it carries."""


from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.db.models.functions import Lower
from django.utils import timezone

from pipeline.models import (
    Build,
    Commit,
    DeployTrain,
    ReleaseCandidate,
    Repository,
    TrainCommit,
)
from pipeline.services import git
from pipeline.services.events import record_event
from pipeline.services.train_locks import freeze_now

from ._base import REVERTS as _REVERTS
from ._base import T, TrainError, _production_nodes
from ._drive import _end, enqueue_advance


def tick(repository, now=None):
    """The schedule's tick: start a train unless one is active, there is no new green
    candidate, a freeze window is open, or a train was already started for this hour.
    Returns the new train, or a sentence saying why none started (nothing is recorded:
    an idle tick every hour would bury the event log)."""
    now = timezone.localtime(now or timezone.now())
    if window := freeze_now(repository, now):
        return f"frozen: {window}"
    slot = now.strftime("%Y-%m-%dT%H")
    try:
        return start_train(repository, via="schedule", slot=slot)
    except TrainError as exc:
        return str(exc)


def start_train(repository, *, user=None, via="cli", override_lock=False, slot=""):
    """Start a train now with the newest usable candidate. Returns the DeployTrain.
    Raises TrainError: a train is active, no new green candidate, a freeze window is open
    (unless override_lock), or a train already started in this schedule slot."""
    if not slot and (window := freeze_now(repository)) and not override_lock:
        raise TrainError(f"{repository.name} is frozen ({window}): a release manager may "
                         "start one with --override-lock")
    try:
        with transaction.atomic():
            # Starts of one repository take turns: the active-train check below holds.
            Repository.objects.select_for_update(no_key=True).filter(pk=repository.pk).exists()
            if active := DeployTrain.objects.active().filter(repository=repository).first():
                raise TrainError(f"train #{active.pk} is {active.get_status_display()}: one "
                                 "train at a time")
            if slot and DeployTrain.objects.filter(repository=repository,
                                                   schedule_slot=slot).exists():
                raise TrainError(f"a train already started for {slot}")
            base = production_sha(repository)
            candidate, commits = _pick_candidate(repository, base)
            train = DeployTrain.objects.create(
                repository=repository, head_sha=candidate.sha, base_sha=base or "",
                candidate=candidate, schedule_slot=slot, override_lock=override_lock,
                started_by=user if user and user.pk else None, started_via=via,
                message="starting")
            _open_build(train, candidate.build.spec, user, via)
            _record_commits(train, commits)
            who = user.get_username() if user and user.pk else "the schedule"
            record_event("train.created", subject=train, new=T.SCHEDULED, actor=user,
                         message=f"{who} started train #{train.pk} with {candidate.sha[:10]} "
                                 f"({len(commits)} commit{'' if len(commits) == 1 else 's'} "
                                 f"since {base[:10] if base else 'the first deploy'})")
            transaction.on_commit(lambda: enqueue_advance(train.pk))
    except IntegrityError as exc:
        # Two starts raced past the checks: the constraints let one through.
        raise TrainError("another train was started at the same moment") from exc
    return train


def start_rollback(repository, user, reason, *, via="web"):
    """A rollback train: the SHA production ran before its latest train, through the same
    production rollout, without lower environments or approvals. An active train that has
    not reached production is cancelled for it. Returns the new DeployTrain."""
    if not (reason or "").strip():
        raise TrainError("a rollback needs a reason")
    with transaction.atomic():
        Repository.objects.select_for_update(no_key=True).filter(pk=repository.pk).exists()
        last = (DeployTrain.objects.filter(repository=repository, status=T.DEPLOYED)
                .order_by("-finished_at", "-id").first())
        if last is None or not last.base_sha:
            raise TrainError(f"{repository.name} has no earlier production release to roll "
                             "back to")
        spec = _spec_for(repository, last.base_sha)
        if spec is None:
            raise TrainError(f"no record of how {last.base_sha[:10]} was deployed")
        active = DeployTrain.objects.active().filter(repository=repository).first()
        if active and active.status == T.DEPLOYING_PRODUCTION:
            raise TrainError(f"train #{active.pk} is deploying to production: roll back "
                             "once it has ended")
        if active:
            _end(active, T.CANCELLED, f"cancelled: {user.get_username()} rolled back "
                                      f"production ({reason})", actor=user)
        train = DeployTrain.objects.create(
            repository=repository, kind=DeployTrain.Kind.ROLLBACK, head_sha=last.base_sha,
            base_sha=last.head_sha, started_by=user, started_via=via, forced_by=user,
            force_reason=reason, message=f"rolling back: {reason}")
        _open_build(train, spec, user, via)
        record_event("train.created", subject=train, new=T.SCHEDULED, actor=user,
                     message=f"{user.get_username()} rolls production back from "
                             f"{last.head_sha[:10]} to {last.base_sha[:10]}: {reason}")
        transaction.on_commit(lambda: enqueue_advance(train.pk))
    return train


def production_sha(repository):
    """What production runs: the head of the latest train that reached it, else the SHA
    most of the repository's production nodes report, else None."""
    last = (DeployTrain.objects.filter(repository=repository, status=T.DEPLOYED)
            .order_by("-finished_at", "-id").values_list("head_sha", flat=True).first())
    if last:
        return last
    from collections import Counter


    shas = Counter(_production_nodes(repository).exclude(current_sha="")
                   .values_list("current_sha", flat=True))
    return shas.most_common(1)[0][0] if shas else None


def _pick_candidate(repository, base):
    """The newest candidate a train may carry, and the commits base..candidate. Candidates
    no newer than a vetoed, failed or rolled-back train's are out (the next train needs a
    newer one), and so is any that carries a commit without the revert that follows it."""
    candidates = ReleaseCandidate.objects.filter(repository=repository).select_related("build")
    if floor := _candidate_floor(repository):
        candidates = candidates.filter(pk__gt=floor)
    candidates = list(candidates.order_by("-id")[:20])
    if not candidates:
        raise TrainError(f"no new green candidate for {repository.name}: merge something and "
                         "let its master build pass")
    reverted = _reverted_later(repository, base)
    limit = settings.TRAINYARD["TRAIN_MAX_COMMITS"]
    for candidate in candidates:
        if candidate.sha == base:
            break
        commits = git.commit_log(repository, candidate.sha, base=base, limit=limit)
        if not commits:
            break  # production already has it: so has it every older candidate
        shas = {c["sha"] for c in commits}
        if any(sha in shas and revert not in shas for sha, revert in reverted.items()):
            continue  # ships a commit without its revert: an older candidate may not
        return candidate, commits
    raise TrainError(f"no new green candidate for {repository.name} since production "
                     f"({base[:10] if base else 'nothing deployed'})")


def _candidate_floor(repository):
    """The newest candidate a vetoed, failed or rolled-back train carried."""
    ended = DeployTrain.objects.filter(repository=repository, kind=DeployTrain.Kind.TRAIN)
    rolled_back = DeployTrain.objects.filter(repository=repository, status=T.DEPLOYED,
                                             kind=DeployTrain.Kind.ROLLBACK)
    floors = ended.filter(Q(status__in=[T.VETOED, T.FAILED])
                          | Q(head_sha__in=rolled_back.values("base_sha")))
    return max(floors.exclude(candidate=None).values_list("candidate_id", flat=True), default=None)


def _reverted_later(repository, base):
    """{reverted sha: the revert's sha} for reverts on the default branch since `base`."""
    head = repository.default_branch_head or None
    if not head:
        return {}
    try:
        log = git.commit_log(repository, head, base=base, limit=settings.TRAINYARD["TRAIN_MAX_COMMITS"])
    except (git.GitError, git.InvalidRef):
        return {}
    return {m.group(1): c["sha"] for c in log if (m := _REVERTS.search(c["message"]))}


def _open_build(train, spec_dict, user, via):
    """The build that holds the train's jobs (deploys, acceptance tests, production)."""
    repository = train.repository
    commit = _record_commit(repository, train.head_sha)
    build = Build.objects.create(
        repository=repository, commit=commit, sha=train.head_sha,
        branch=repository.default_branch, kind=Build.Kind.TRAIN, status=Build.Status.RUNNING,
        spec=spec_dict, train=train, started_at=timezone.now(),
        requested_by=user if user and user.pk else None, requested_via=via,
        message=f"train #{train.pk}")
    train.__dict__["build"] = build
    return build


def _record_commit(repository, sha):
    from pipeline.services.builds import record_commit

    return record_commit(repository, sha)


def _spec_for(repository, sha):
    """The spec a SHA was built or deployed with: its master build's or an earlier train's."""
    return (Build.objects.filter(repository=repository, sha=sha, spec__isnull=False)
            .exclude(kind=Build.Kind.BRANCH).order_by("-id").values_list("spec", flat=True)
            .first())


def _record_commits(train, commits):
    """TrainCommit rows: each commit with its pull request and its author mapped to a user
    (by e-mail, else by login); merge commits carry no change of their own: no author."""
    from pipeline.models import PullRequest

    repository = train.repository
    users = _user_map(commits)
    merged = {pr.merge_sha: pr for pr in PullRequest.objects.filter(
        repository=repository, state=PullRequest.State.MERGED,
        merge_sha__in=[c["sha"] for c in commits])}
    pr_of = {}
    for merge_sha, pr in merged.items():
        parents = next(c["parents"] for c in commits if c["sha"] == merge_sha)
        if len(parents) == 2:
            for branch_commit in git.commit_log(repository, parents[1], base=parents[0], limit=200):
                pr_of.setdefault(branch_commit["sha"], pr)
        pr_of[merge_sha] = pr
    rows = []
    stored = _commit_rows(repository, commits)
    for position, info in enumerate(commits):
        commit = stored[info["sha"]]
        is_merge = len(info["parents"]) > 1
        match = _REVERTS.search(info["message"])
        rows.append(TrainCommit(
            train=train, commit=commit, position=position, pull_request=pr_of.get(info["sha"]),
            author=None if is_merge else users.get(_author_key(info)), is_merge=is_merge,
            reverts=match.group(1) if match else ""))
    TrainCommit.objects.bulk_create(rows)


def _commit_rows(repository, commits):
    """{sha: Commit} for `commits`, the missing ones made in one insert (not one query each)."""
    shas = [info["sha"] for info in commits]
    Commit.objects.bulk_create([
        Commit(repository=repository, sha=info["sha"], author_name=info["author_name"][:200],
               author_email=info["author_email"][:254], committed_at=info["committed_at"] or None,
               message=info["message"], is_revert=info["message"].startswith("Revert "))
        for info in commits], ignore_conflicts=True)
    return {commit.sha: commit
            for commit in Commit.objects.filter(repository=repository, sha__in=shas)}


def _author_key(info):
    return info["author_email"].lower(), info["author_name"].lower()


def _user_map(commits):
    """(email, name) -> active user: e-mail first (any case), then a login equal to the
    author name. One query."""
    emails = {c["author_email"].lower() for c in commits if c["author_email"]}
    names = {c["author_name"].lower() for c in commits if c["author_name"]}
    by_email, by_login = {}, {}
    users = (get_user_model().objects.filter(is_active=True)
             .annotate(email_lower=Lower("email"), login_lower=Lower("username"))
             .filter(Q(email_lower__in=emails) | Q(login_lower__in=names)))
    for user in users:
        if user.email:
            by_email.setdefault(user.email_lower, user)
        by_login.setdefault(user.login_lower, user)
    return {_author_key(c): by_email.get(c["author_email"].lower())
            or by_login.get(c["author_name"].lower()) for c in commits}
