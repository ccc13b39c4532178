"""A job's log: output buffered and stored in ordered chunks a few times a second, with the
repository's secret variables masked before anything is stored."""

import logging
import time

from django.db import InterfaceError, OperationalError, connection

from pipeline.models import LogChunk

logger = logging.getLogger(__name__)

FLUSH_SECONDS = 0.25
FLUSH_BYTES = 64 * 1024
MASK = "***"


def once_more_on_a_new_connection(work):
    """A running job outlives a database connection that died under it (a restarted or
    failed-over PostgreSQL terminates backends): drop the dead one and try again once."""
    try:
        return work()
    except (OperationalError, InterfaceError):
        logger.warning("database connection lost; trying again on a new one", exc_info=True)
        connection.close()
        return work()


class LogWriter:
    """Buffers output and stores it in ordered chunks a few times a second.

    Secrets are replaced by `***`. A secret may arrive split across two writes, so the last
    (longest secret - 1) characters stay buffered until more output or the final flush.
    """

    def __init__(self, job, secrets=()):
        self.job = job
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)
        self.hold = max((len(s) for s in self.secrets), default=1) - 1
        self.seq = LogChunk.objects.filter(job=job).count()
        self.buffer = ""
        self.flushed_at = time.monotonic()

    def write(self, text):
        self.buffer += text
        if len(self.buffer) >= FLUSH_BYTES or time.monotonic() - self.flushed_at >= FLUSH_SECONDS:
            self.flush(final=False)

    def tick(self):
        if time.monotonic() - self.flushed_at >= FLUSH_SECONDS:
            self.flush(final=False)

    def mask(self, text):
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        return text

    def flush(self, final=True):
        self.flushed_at = time.monotonic()
        masked = self.mask(self.buffer)
        if final or not self.hold:
            ready, self.buffer = masked, ""
        else:
            # Keep a tail that could be the start of a secret; the rest is safe to store.
            cut = max(0, len(masked) - self.hold)
            ready, self.buffer = masked[:cut], masked[cut:]
        if not ready:
            return
        once_more_on_a_new_connection(
            lambda: LogChunk.objects.create(job=self.job, seq=self.seq, text=ready))
        self.seq += 1
