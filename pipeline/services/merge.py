"""Merging a local provider's pull request into its default branch.

Refused, with the reasons in a sentence, unless the pull request is good to merge (its
latest branch build passed on its head) and has the repository's required LGTMs. The merge
commit is made on the origin with plumbing (see git.merge_commit / git.update_branch): a
push to the default branch between the check and the update is never lost; the merge is
made again on top of it, up to MERGE_ATTEMPTS times, then refused.
"""

import logging

from django.db import transaction

from pipeline.models import PullRequest, Repository
from pipeline.services import git, pulls
from pipeline.services.builds import BuildRequestError, request_build

logger = logging.getLogger(__name__)
MERGE_ATTEMPTS = 3


class MergeRefused(ValueError):
    """The pull request cannot be merged; the message says why, for the person asking."""


def merge_blockers(pr):
    """Why `pr` cannot be merged now, one phrase per reason (empty: it can)."""
    reasons = []
    if pr.state != PullRequest.State.OPEN:
        return [f"#{pr.number} is already {pr.state}"]
    if not pr.good_to_merge:
        reasons.append(f"not good to merge: {_build_verdict(pr)}")
    needed = pr.repository.lgtms_required
    has = pr.counted_lgtms().count()
    if has < needed:
        reasons.append(f"needs {needed} LGTM{'' if needed == 1 else 's'}, has {has}")
    return reasons


def _build_verdict(pr):
    build = pr.latest_build
    if build is None:
        return "the branch has not been built"
    if build.sha != pr.head_sha:
        return (f"its head {pr.head_sha[:10]} has not been built (build #{build.pk} was of "
                f"{build.sha[:10]})")
    if build.is_active:
        return f"build #{build.pk} is still {build.status}"
    return f"build #{build.pk} {build.status} ({build.message})" if build.message else \
        f"build #{build.pk} {build.status}"


def merge_pull_request(pr, *, user):
    """Merge `pr` into its repository's default branch. Returns (merge_sha, master_build or
    None). Raises MergeRefused with the reason."""
    repository = pr.repository
    if repository.provider != Repository.Provider.LOCAL:
        raise MergeRefused("only pull requests of local repositories are merged here")
    if pr.state != PullRequest.State.OPEN:
        raise MergeRefused(f"#{pr.number} is already {pr.state}")
    try:
        # Check what the branch holds now, not what the last sync saw.
        head = git.resolve_branch(repository, pr.branch)
        origin = git.local_origin(repository)
    except git.InvalidRef as exc:
        raise MergeRefused(f"cannot merge #{pr.number}: {exc}") from exc
    except git.GitError as exc:
        raise MergeRefused(f"cannot read {repository.name}: {exc}") from exc
    pulls.record_push(repository, pr.branch, head)
    pr.refresh_from_db()
    if reasons := merge_blockers(pr):
        raise MergeRefused(f"cannot merge #{pr.number}: {'; '.join(reasons)}")
    merged = _merge_on_origin(pr, origin, user)
    with transaction.atomic():
        PullRequest.objects.filter(pk=pr.pk).update(merge_sha=merged)
        pr.merge_sha = merged
        pulls.close_pull_request(pr, state=PullRequest.State.MERGED, user=user,
                                 reason=f"merged into {repository.default_branch} as "
                                        f"{merged[:10]} by {user.get_username()}")
    return merged, _build_new_head(repository, merged, user)


def _merge_on_origin(pr, origin, user):
    branch = pr.repository.default_branch
    message = f"Merge pull request #{pr.number} from {pr.branch}\n\n{pr.title}\n"
    name = user.get_full_name() or user.get_username()
    email = user.email or f"{user.get_username()}@trainyard.invalid"
    for _ in range(MERGE_ATTEMPTS):
        base = git.origin_branch_head(origin, branch)
        if base is None:
            raise MergeRefused(f"{pr.repository.name} has no branch {branch} to merge into")
        if git.is_ancestor(origin, pr.head_sha, base):
            raise MergeRefused(f"#{pr.number}'s head {pr.head_sha[:10]} is already in {branch}")
        try:
            merged = git.merge_commit(origin, base, pr.head_sha, message, name=name, email=email)
        except git.MergeConflict as exc:
            raise MergeRefused(f"cannot merge #{pr.number} into {branch}: {exc}") from exc
        except git.GitError as exc:
            raise MergeRefused(f"cannot merge #{pr.number}: {exc}") from exc
        if git.update_branch(origin, branch, merged, base,
                             reason=f"trainyard: merge #{pr.number}"):
            return merged
        logger.info("%s moved while merging #%s: merging again on its new head", branch,
                    pr.number)
    raise MergeRefused(f"{branch} kept moving while #{pr.number} was merged; try again")


def _build_new_head(repository, merged, user):
    """The merge is a new default-branch head: it gets its master build (checks only). A
    build that cannot be queued does not undo the merge: the next sync sees the head move
    and asks again."""
    try:
        build, _ = request_build(repository, repository.default_branch, user=user, via="merge")
    except BuildRequestError as exc:
        logger.warning("merged %s but could not build it: %s", merged[:10], exc)
        return None
    Repository.objects.filter(pk=repository.pk).update(default_branch_head=build.sha)
    return build
