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

    Text is stored at most FLUSH_SECONDS after it was written (on a write or a tick), so
    what a burst writes within that time (a check's preamble, its few lines of output and
    its result) becomes one chunk, not one per write.

    Secrets are replaced by `***`. A secret may arrive split across two writes, so the last
    (longest secret - 1) characters stay buffered until more output or the final flush.
    """

    def __init__(self, job, secrets=()):
        self.job = job
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)
        self.hold = max((len(s) for s in self.secrets), default=1) - 1
        self.seq = None  # counted at the first store: a writer that stores nothing asks nothing
        self.buffer = ""
        self.since = None  # when the oldest text in the buffer was written

    def write(self, text):
        if not text:
            return
        if self.since is None:
            self.since = time.monotonic()
        self.buffer += text
        if len(self.buffer) >= FLUSH_BYTES or time.monotonic() - self.since >= FLUSH_SECONDS:
            self.flush(final=False)

    def tick(self):
        if self.since is not None and time.monotonic() - self.since >= FLUSH_SECONDS:
            self.flush(final=False)

    def mask(self, text):
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        return text

    def flush(self, final=True):
        masked = self.mask(self.buffer)
        if final or not self.hold:
            ready, self.buffer = masked, ""
        else:
            # Keep a tail that could be the start of a secret; the rest is safe to store.
            cut = max(0, len(masked) - self.hold)
            ready, self.buffer = masked[:cut], masked[cut:]
        self.since = time.monotonic() if self.buffer else None
        if not ready:
            return
        once_more_on_a_new_connection(lambda: self._store(ready))

    def _store(self, text):
        if self.seq is None:
            # After the chunks of an earlier attempt of the job. A first attempt has none:
            # only the run that claimed the job writes its log.
            attempt = getattr(self.job, "attempt", None)
            self.seq = 0 if attempt == 1 else LogChunk.objects.filter(job=self.job).count()
        LogChunk.objects.create(job=self.job, seq=self.seq, text=text)
        self.seq += 1
