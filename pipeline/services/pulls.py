"""Pull requests for the local git provider: open, follow pushes, close.

(GitHub pull requests arrive through webhooks in a later issue and use the same rows.)
"""

import logging
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Max

from pipeline.models import Build, Commit, Lgtm, PullRequest, Repository
from pipeline.services import git
from pipeline.services.events import record_event

logger = logging.getLogger(__name__)
SYNC_FETCHES = 4  # mirrors one sync fetches at once


class PullRequestError(ValueError):
    pass


def open_pull_request(repository, branch, *, title="", user=None):
    try:
        head = git.resolve_branch(repository, branch)
    except (git.InvalidRef, git.GitError) as exc:
        raise PullRequestError(str(exc)) from exc
    if branch == repository.default_branch:
        raise PullRequestError(f"{branch} is the default branch: there is nothing to merge into")
    existing = PullRequest.objects.filter(repository=repository, branch=branch,
                                          state=PullRequest.State.OPEN).first()
    if existing:
        return existing, False
    author = user.get_username() if user and user.is_authenticated else ""
    for _ in range(3):  # two opens racing for the next number: the loser takes the one after
        number = (repository.pull_requests.aggregate(n=Max("number"))["n"] or 0) + 1
        try:
            with transaction.atomic():
                pr = PullRequest.objects.create(repository=repository, number=number,
                                                title=title or branch, branch=branch,
                                                head_sha=head, author_name=author)
                record_event("pull_request.opened", subject=repository, new="open", actor=user,
                             message=f"#{number} {pr.title} ({branch})")
            return pr, True
        except IntegrityError:
            continue
    raise PullRequestError("could not number the pull request; try again")


def close_pull_request(pr, *, reason="closed", state=PullRequest.State.CLOSED, user=None):
    from nodes.services.allocation import forget_branch

    updated = PullRequest.objects.filter(pk=pr.pk, state=PullRequest.State.OPEN).update(state=state)
    if updated:
        pr.state = state
        record_event("pull_request.closed", subject=pr.repository, old="open", new=state,
                     actor=user, message=f"#{pr.number} {reason}")
        forget_branch(pr.repository, pr.branch, reason)
    return bool(updated)


def authors(pr):
    """The users who wrote `pr`: the user who opened it, when that maps to one; else the
    users whose e-mail is its head commit's author e-mail."""
    from django.contrib.auth import get_user_model

    users = get_user_model().objects.filter(is_active=True)
    if pr.author_name and (opener := users.filter(username=pr.author_name).first()):
        return [opener]
    commit = Commit.objects.filter(repository=pr.repository, sha=pr.head_sha).first()
    try:
        email = commit.author_email if commit else git.commit_info(pr.repository,
                                                                   pr.head_sha)["author_email"]
    except (git.GitError, git.InvalidRef):
        email = ""
    return list(users.filter(email__iexact=email)) if email else []


def give_lgtm(pr, user, *, actor=None):
    """`user` says the pull request looks good, at its current head. Returns (lgtm, created);
    a second LGTM by the same user moves theirs to the current head. `actor` is who asked,
    when they act for `user`."""
    if pr.repository.provider != Repository.Provider.LOCAL:
        raise PullRequestError("LGTMs are given here only on pull requests of local repositories")
    if pr.state != PullRequest.State.OPEN:
        raise PullRequestError(f"#{pr.number} is {pr.state}: it takes no more LGTMs")
    if user in authors(pr):
        raise PullRequestError(f"{user.get_username()} wrote #{pr.number}: an author cannot "
                               "LGTM their own pull request")
    with transaction.atomic():
        lgtm, created = Lgtm.objects.update_or_create(pull_request=pr, user=user,
                                                      defaults={"sha": pr.head_sha})
        via = f" (by {actor.get_username()})" if actor and actor != user else ""
        record_event("pull_request.lgtm", subject=pr.repository, actor=actor or user,
                     message=f"#{pr.number} LGTM from {user.get_username()} at "
                             f"{pr.head_sha[:10]}{via}",
                     data={"pull_request": pr.number, "user": user.get_username(),
                           "sha": pr.head_sha})
    return lgtm, created


def record_push(repository, branch, sha):
    """A branch moved: its open pull request follows (and stops being good to merge)."""
    return PullRequest.objects.filter(repository=repository, branch=branch,
                                      state=PullRequest.State.OPEN).exclude(head_sha=sha).update(
        head_sha=sha)


def sync_pull_requests(repository, *, timeout=None, wait=True):
    """Poll the local repository: follow pushes, close pull requests whose branch is gone.

    Raises git.GitError when the fetch fails or takes longer than `timeout`, and
    git.MirrorBusy at once, with wait=False, when another fetch holds the mirror.
    """
    git.update_mirror(repository, timeout=timeout, wait=wait)
    _follow_branches(repository)


def _follow_branches(repository):
    notice_default_head(repository)
    for pr in PullRequest.objects.filter(repository=repository, state=PullRequest.State.OPEN):
        try:
            head = git.resolve_branch_cached(repository, pr.branch)
        except git.InvalidRef:
            close_pull_request(pr, reason="its branch was deleted")
            continue
        record_push(repository, pr.branch, head)


def notice_default_head(repository, head=None):
    """A default-branch head Trainyard has not seen before gets a master build (checks
    only). The first head ever seen is only noted: registering is not a push. Returns the
    build, or None."""
    from pipeline.services.builds import BuildRequestError, request_build

    try:
        head = head or git.resolve_branch_cached(repository, repository.default_branch)
    except (git.InvalidRef, git.GitError):
        return None
    seen = Repository.objects.filter(pk=repository.pk).values_list("default_branch_head",
                                                                   flat=True).first()
    # Conditional: of two syncs noticing the same head, one requests its build.
    moved = Repository.objects.filter(pk=repository.pk, default_branch_head=seen).exclude(
        default_branch_head=head).update(default_branch_head=head)
    repository.default_branch_head = head
    if not moved or not seen:
        return None
    if repository.builds.filter(kind=Build.Kind.MASTER, sha=head).exists():
        return None  # built already (a merge here, or someone asked for it)
    try:
        return request_build(repository, repository.default_branch, via="sync")[0]
    except BuildRequestError as exc:
        logger.warning("could not build %s's new %s head: %s", repository.name,
                       repository.default_branch, exc)
        return None


def sync_local_repositories():
    """The beat task's work: every local repository, one failure not stopping the rest.

    Never waits. A sync that overlaps the last one returns None at once (the sync.lock of
    this host's workspace); a repository whose mirror another fetch holds is skipped until
    the next tick; each fetch stops after GIT_SYNC_TIMEOUT, and SYNC_FETCHES of them run at
    once, so stalled remotes hold up neither the healthy ones nor the next tick for long.
    Returns the names that were {"synced", "skipped", "failed"}.
    """
    from pipeline.models import Repository

    lock = Path(settings.TRAINYARD["WORKSPACE_DIR"]) / "sync.lock"
    with git.lock_file(lock, wait=0) as held:
        if not held:
            logger.info("the last sync of pull requests is still running: not starting another")
            return None
        return _sync_all(list(Repository.objects.filter(provider=Repository.Provider.LOCAL)))


def _sync_all(repositories):
    timeout = settings.TRAINYARD["GIT_SYNC_TIMEOUT"]
    outcome = {"synced": [], "skipped": [], "failed": []}
    # Only the fetches run in the pool; the database work stays in this thread.
    with ThreadPoolExecutor(max_workers=SYNC_FETCHES, thread_name_prefix="sync") as pool:
        fetches = {pool.submit(git.update_mirror, repository, timeout=timeout, wait=False):
                   repository for repository in repositories}
        for fetch in as_completed(fetches):
            name = fetches[fetch].name
            try:
                fetch.result()
                _follow_branches(fetches[fetch])
            except git.MirrorBusy:
                logger.info("sync skipped %s: another fetch of its mirror is running", name)
                outcome["skipped"].append(name)
            except git.GitError as exc:
                logger.warning("could not sync %s: %s", name, exc)
                outcome["failed"].append(name)
            else:
                outcome["synced"].append(name)
    return {key: sorted(names) for key, names in outcome.items()}
