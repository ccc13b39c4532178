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

from ._answers import answer, cancel, current_train, force, remind_authors
from ._base import PRODUCTION, TrainError, is_release_manager, train_authors
from ._drive import advance, advance_active, advance_active_of, enqueue_advance
from ._start import production_sha, start_rollback, start_train, tick

__all__ = [
    "PRODUCTION", "TrainError", "advance", "advance_active", "advance_active_of", "answer",
    "cancel", "current_train", "enqueue_advance", "force", "is_release_manager", "lock",
    "production_sha", "remind_authors", "start_rollback", "start_train", "status", "tick",
    "train_authors", "unlock", "why",
]


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
