"""Heartbeats: a running job says "still alive" every few seconds from a thread of its own,
so the reaper can tell a job whose worker died (silent) from a long one (beating) within a
minute, whatever the job is doing (a checkout, a setup step, a command, a deploy)."""

import logging
import threading

from django.conf import settings
from django.db import DatabaseError, connection
from django.utils import timezone

logger = logging.getLogger(__name__)


def interval():
    return settings.TRAINYARD["HEARTBEAT_SECONDS"]


class Heartbeat:
    """`with Heartbeat(job_id):` updates Job.heartbeat_at now and every interval() seconds
    until the block ends. The beat uses its own database connection (its own thread).
    `claimed=True`: the claim that just moved the job to running set heartbeat_at in the
    same update, so the first beat is the one after an interval."""

    def __init__(self, job_id, *, claimed=False):
        self.job_id, self.claimed = job_id, claimed
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job_id}", daemon=True)

    def beat(self):
        from pipeline.models import Job

        try:
            Job.objects.filter(pk=self.job_id).update(heartbeat_at=timezone.now())
        except DatabaseError:
            # The database being away is the reaper's business, not a reason to stop the
            # job; a connection it terminated is dropped so the next beat takes a new one.
            logger.warning("heartbeat of job %s not stored", self.job_id, exc_info=True)
            connection.close_if_unusable_or_obsolete()

    def _run(self):
        try:
            while not self._stop.wait(interval()):
                self.beat()
        finally:
            connection.close()

    def __enter__(self):
        if not self.claimed:
            self.beat()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(10)
