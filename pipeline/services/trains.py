"""The deploy train: its one writer.

A train carries the newest release candidate (and every commit since the SHA production
runs) through the lower environments (deploy, then acceptance tests, per environment),
asks its authors, and goes to production when all say good. Every status change goes
through `statemachine.transition` on DeployTrain, here and nowhere else.

Doors (chat-ops, API, CLI, web) call these functions; they check permissions first
(`pipeline.permissions`), the rules of the train are checked here.
"""


class TrainError(ValueError):
    """The request is refused; the message says why, for the person asking."""


def start_train(repository, *, user=None, via="cli", override_lock=False, slot=""):
    """Start a train now with the newest usable candidate. Returns the DeployTrain.
    Raises TrainError: a train is active, no new green candidate, frozen (unless
    override_lock)."""
    raise NotImplementedError


def answer(train, user, verdict, reason="", *, via="web"):
    """`user`'s answer (Approval.Verdict.GOOD / BAD) to an active train: only its authors
    or a release manager; "bad" needs a reason and vetoes it. Returns the Approval."""
    raise NotImplementedError


def force(train, user, reason, *, override_veto=False, override_lock=False, via="web"):
    """A release manager skips the waiting for approvals (permission checked by the door)."""
    raise NotImplementedError


def start_rollback(repository, user, reason, *, via="web"):
    """A rollback train: the previous production SHA through the production rollout."""
    raise NotImplementedError


def current_train(repository):
    """The active train, else the latest one, else None."""
    raise NotImplementedError


def lock(repository, user, reason, *, environment="", expires_at=None, via="web"):
    """Lock one environment ("" = the whole repository). Returns the Lock. TrainError if
    it is locked already or the reason is empty."""
    raise NotImplementedError


def unlock(repository, user, *, environment="", via="web"):
    """Release the open lock; a train waiting for it goes on by itself. Returns the Lock."""
    raise NotImplementedError


def why(repository, ref):
    """One sentence: what `ref` (a SHA or a branch) waits for and what would move it."""
    raise NotImplementedError


def status(train):
    """Everything a door shows of a train, as plain data (JSON-ready):
    {"id", "repository", "kind", "status", "head_sha", "base_sha", "environment",
     "message", "url", "created_at", "finished_at", "forced_by", "force_reason",
     "environments": [{"name", "status", "acceptance": {"status", "job_id", "message"} | None,
                       "nodes": [{"name", "url", "sha", "health"}]}],
     "production": {"status", "nodes": [{"name", "url", "sha", "health", "off_cycle"}]},
     "authors": [{"username", "answer": "good"|"bad"|None, "reason", "answered_at"}],
     "unmapped_authors": [{"name", "email"}],
     "commits": [{"sha", "subject", "author_name", "author", "pull_request", "is_revert",
                  "is_merge"}],
     "lock": {"environment", "reason", "locked_by", "expires_at"} | None}"""
    raise NotImplementedError
