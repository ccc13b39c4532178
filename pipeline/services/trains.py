"""The deploy train: its one writer.

A train carries the newest release candidate (and every commit since the SHA production
runs) through the lower environments (deploy, then acceptance tests, per environment),
asks its authors, and goes to production when all say good. Every status change goes
through `statemachine.transition` on DeployTrain, here and nowhere else.

The work is done by jobs of the train's build (deploys and the production rollout in
nodes.services.environments, acceptance tests in the sandbox like any check), so a worker
that dies mid-way is noticed by the reaper like any other. `advance` looks at the train
and its jobs and takes the next step; it runs after every job, answer and unlock, and on
every reaper round, and is harmless to run twice (each step is a guarded transition or a
job name unique per build).

Doors (chat-ops, API, CLI, web) call these functions after checking permissions
(`pipeline.permissions`); the rules of the train are checked here.
"""

import logging
import re
from datetime import timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from pipeline.models import (
    Approval,
    Build,
    Commit,
    DeployTrain,
    Job,
    ReleaseCandidate,
    Repository,
    TrainCommit,
)
from pipeline.services import git
from pipeline.services.events import record_event
from pipeline.services.train_locks import blocking_lock, describe_lock, freeze_now
from pipeline.spec import Spec
from pipeline.statemachine import transition

logger = logging.getLogger(__name__)
T = DeployTrain.Status
PRODUCTION = "production"
# "This reverts commit <sha>." is what `git revert` writes.
_REVERTS = re.compile(r"This reverts commit ([0-9a-f]{40})")


class TrainError(ValueError):
    """The request is refused; the message says why, for the person asking."""


# Starting ---------------------------------------------------------------------------------

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
            Repository.objects.select_for_update().filter(pk=repository.pk).exists()
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
        Repository.objects.select_for_update().filter(pk=repository.pk).exists()
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


def _production_nodes(repository):
    from nodes.models import Node

    return Node.objects.usable_by(repository).filter(environment=Node.Environment.PRODUCTION,
                                                     enabled=True)


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
    for position, info in enumerate(commits):
        commit = _commit_row(repository, info)
        is_merge = len(info["parents"]) > 1
        match = _REVERTS.search(info["message"])
        rows.append(TrainCommit(
            train=train, commit=commit, position=position, pull_request=pr_of.get(info["sha"]),
            author=None if is_merge else users.get(_author_key(info)), is_merge=is_merge,
            reverts=match.group(1) if match else ""))
    TrainCommit.objects.bulk_create(rows)


def _commit_row(repository, info):
    message = info["message"]
    commit, _ = Commit.objects.get_or_create(repository=repository, sha=info["sha"], defaults={
        "author_name": info["author_name"][:200], "author_email": info["author_email"][:254],
        "committed_at": info["committed_at"] or None, "message": message,
        "is_revert": message.startswith("Revert ")})
    return commit


def _author_key(info):
    return info["author_email"].lower(), info["author_name"].lower()


def _user_map(commits):
    """(email, name) -> active user: e-mail first, then a login equal to the author name."""
    User = get_user_model()
    emails = {c["author_email"].lower() for c in commits if c["author_email"]}
    names = {c["author_name"].lower() for c in commits if c["author_name"]}
    by_email, by_login = {}, {}
    for user in User.objects.filter(is_active=True).filter(
            Q(email__in=[e for e in emails]) | Q(username__in=list(names))):
        if user.email:
            by_email.setdefault(user.email.lower(), user)
        by_login.setdefault(user.username.lower(), user)
    # Case-insensitive e-mail matches the filter above may miss (User.email is as typed).
    for user in User.objects.filter(is_active=True).exclude(email=""):
        by_email.setdefault(user.email.lower(), user) if user.email.lower() in emails else None
    return {_author_key(c): by_email.get(c["author_email"].lower())
            or by_login.get(c["author_name"].lower()) for c in commits}


# Moving on ---------------------------------------------------------------------------------

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


def advance(train_id):
    """Take the train's next step, if it has one now. Returns the train (or None)."""
    with transaction.atomic():
        train = (DeployTrain.objects.select_for_update().select_related("repository")
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


# Answers and overrides ---------------------------------------------------------------------

def train_authors(train):
    """The users whose changes the train carries (merge commits and unmapped authors
    excluded), in the order their first commit appears."""
    User = get_user_model()
    ids = []
    for user_id in (TrainCommit.objects.filter(train=train, author__isnull=False)
                    .order_by("position").values_list("author_id", flat=True)):
        if user_id not in ids:
            ids.append(user_id)
    users = User.objects.in_bulk(ids)
    return [users[pk] for pk in ids if pk in users]


def is_release_manager(user):
    from pipeline.permissions import can

    return can(user, "force")


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
                locked = DeployTrain.objects.select_for_update().get(pk=train.pk)
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
        locked = DeployTrain.objects.select_for_update().select_related("repository").get(
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
        locked = DeployTrain.objects.select_for_update().get(pk=train.pk)
        if locked.status == T.DEPLOYING_PRODUCTION:
            raise TrainError(f"train #{locked.pk} is deploying to production: it cannot be "
                             "cancelled half way")
        if not _end(locked, T.CANCELLED, f"cancelled by {user.get_username()}: {reason}",
                    actor=user):
            raise TrainError(f"train #{locked.pk} is {locked.get_status_display()}")
    return locked


# Reading -----------------------------------------------------------------------------------

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


def advance_active_of(repository):
    for train_id in (DeployTrain.objects.active().filter(repository=repository)
                     .values_list("pk", flat=True)):
        advance(train_id)


def lock(repository, user, reason, *, environment="", expires_at=None, via="web"):
    """Lock one environment ("" = the whole repository). Returns the Lock. TrainError if
    it is locked already or the reason is empty."""
    from pipeline.services import train_locks

    try:
        return train_locks.lock(repository, user, reason, environment=environment,
                                expires_at=expires_at, via=via)
    except train_locks.LockError as exc:
        raise TrainError(str(exc)) from exc


def unlock(repository, user, *, environment="", via="web"):
    """Release the open lock; a train waiting for it goes on by itself. Returns the Lock."""
    from pipeline.services import train_locks

    try:
        return train_locks.unlock(repository, user, environment=environment, via=via)
    except train_locks.LockError as exc:
        raise TrainError(str(exc)) from exc


def why(repository, ref):
    """One sentence: what `ref` (a SHA or a branch) waits for and what would move it."""
    from pipeline.services.train_status import why as explain

    return explain(repository, ref)


def status(train):
    """Everything a door shows of a train, as plain data (JSON-ready): see train_status."""
    from pipeline.services.train_status import train_status

    return train_status(train)
