"""The Celery app. Workers, beat and the embedded standalone worker all use this one.

Two things here keep a worker alive through outages (tests/test_outages.py):
- database connections are checked around every task, as Django does around requests;
- a kombu 5.7 crash on a lost Redis connection is turned into the connection error it
  should have been (see `_guard_released_redis_channels`).
"""

import os

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pipeline.settings")

app = Celery("trainyard")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


# Database connections around tasks ------------------------------------------------------
#
# Celery's Django fixup closes connections around every task only when it does not reuse
# them (CELERY_DB_REUSE_MAX unset): with reuse it closes them every that many tasks and
# never checks them, so a worker whose PostgreSQL backends were terminated kept failing
# task after task with "the connection is closed". Django's request cycle calls
# close_old_connections() before and after every request; a task gets the same: a
# connection that errored and no longer answers is dropped, one past CONN_MAX_AGE is
# closed (with the pool: handed back, and the pool's check replaces a dead one on the next
# checkout), and with CONN_HEALTH_CHECKS a kept one is checked before the task's first
# query. Signals run in the thread that runs the task, the thread whose connections these
# are (threads pool included).

@signals.task_prerun.connect
def _connections_before_task(task=None, **kwargs):
    _close_old_connections(task)


@signals.task_postrun.connect
def _connections_after_task(task=None, **kwargs):
    _close_old_connections(task)


def _close_old_connections(task):
    # An eager task runs inside its caller, maybe inside its transaction: leave it be.
    if task is not None and getattr(task.request, "is_eager", False):
        return
    from django.db import close_old_connections

    close_old_connections()


# Redis connection loss (kombu 5.7.0, celery 5.7.0, redis-py 8.1.0) -----------------------

def _guard_released_redis_channels():
    """Raise a connection error, not AttributeError, from a channel whose transport is gone.

    When the broker connection drops, Celery 5.7's consumer calls `connection.collect()`
    and then `connection.close()`. collect() closes the default channel (the one the task
    consumer reads from) and then releases the transport (`transport.client = None`). But
    with a BRPOP in flight (a worker with a free slot nearly always has one), closing the
    channel starts by draining that BRPOP on the dead socket: it raises ConnectionError,
    collect() swallows it, and the channel stays open with its unacknowledged messages.
    close() then closes the same channel again; restoring the unacked messages needs a new
    Redis pool, built from `self.connection.client.hostname` with `client` now None:
    AttributeError. That is not a connection error, so the consumer does not reconnect:
    "Unrecoverable error", and the worker shuts down once its running tasks end. A task
    that ran across the loss and is acknowledged afterwards goes down the same path.

    Raising redis' ConnectionError there instead makes every caller treat it as what it is
    (kombu ignores it on close, Celery logs "Couldn't ack" and carries on, the consumer
    reconnects). The message itself stays unacked in Redis and comes back after the
    visibility timeout, or was lost with a Redis that restarted empty: tasks are harmless
    to run twice and the reaper re-queues jobs that stop beating.

    Seen with a task running (acks_late) when Redis restarted: tests/test_outages.py. Not
    needed with celery 5.6.3 + kombu 5.6.2 + redis 6.4.0 (no close() after collect()), and
    harmless anywhere: it only acts where the original would raise AttributeError.
    """
    from kombu.transport import redis as redis_transport

    channel = redis_transport.Channel
    original = channel._connparams
    if getattr(original, "trainyard_guard", False):
        return

    def _connparams(self, *args, **kwargs):
        if self.connection.client is None:
            raise redis_transport.get_redis_ConnectionError()(
                "the broker connection of this channel was closed (it was lost)")
        return original(self, *args, **kwargs)

    _connparams.trainyard_guard = True
    channel._connparams = _connparams


_guard_released_redis_channels()
