"""Celery worker and beat inside the web process, for the standalone run.

With the `memory://` broker producer and consumer must share a process; with Redis this
is simply a convenience. Production runs `celery worker` and `celery beat` instead.
"""

import logging
import threading

from celery.beat import EmbeddedService
from celery.worker import WorkController

logger = logging.getLogger(__name__)
QUEUES = ["default", "checks", "deploys"]


def start_worker(app, concurrency=8):
    worker = WorkController(
        app=app,
        pool_cls="threads",
        concurrency=concurrency,
        queues=QUEUES,
        without_heartbeat=True,
        without_mingle=True,
        without_gossip=True,
        hostname="embedded@trainyard",
    )
    thread = threading.Thread(target=worker.start, name="celery-worker", daemon=True)
    thread.start()
    logger.info("embedded Celery worker started (%s threads)", concurrency)
    return worker


def start_beat(app):
    # EmbeddedService ignores beat_scheduler unless told: without this it would keep a
    # schedule file in the working directory instead of django-celery-beat's tables.
    beat = EmbeddedService(app, thread=True, scheduler_cls=app.conf.beat_scheduler)
    beat.start()
    logger.info("embedded Celery beat started")
    return beat
