"""Job checkouts are thrown away later, when the worker has nothing to run.

Deleting a checkout costs the host more than it seems: on ext4 every unlink and rmdir
goes through the journal, and for 30 s a freed inode makes each new file of its group
scan past it (`recently_deleted`), so deleting checkouts while others are being made
slows every checkout of a burst of builds. A job's folder is therefore renamed into
WORKSPACE_DIR/trash (one rename: the job's path is free again at once), and a
low-priority thread of the worker process deletes it once it is WORKSPACE_TRASH_DELAY
seconds old and no job runs in the process. So that neither a steady stream of builds
nor a few huge checkouts can fill the disk, the oldest entries beyond
WORKSPACE_TRASH_MAX_ENTRIES go at once, busy or not, and everything goes at once while
the disk has less than WORKSPACE_TRASH_MIN_FREE_BYTES free.

Entries are named `<unix time in ns>.<name>.<random>`: any worker of the host (or one
started after a crash) knows from the name when an entry is due, and two deleting one
entry at once is harmless (errors are ignored; what is left goes next time).
"""

import os
import shutil
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

from django.conf import settings

_lock = threading.Lock()
_wake = threading.Event()
_thread = None
_running = 0  # jobs running in this process


@contextmanager
def job_running():
    """Around a job: the trash waits while any job of this process runs."""
    global _running
    with _lock:
        _running += 1
    try:
        yield
    finally:
        with _lock:
            _running -= 1
            idle = _running == 0
        if idle:
            _wake.set()


def trash_dir():
    return Path(settings.TRAINYARD["WORKSPACE_DIR"]) / "trash"


def discard(path):
    """Take `path` (a folder) out of the way now; its deletion comes later. A path that
    does not exist is fine. Falls back to deleting at once if it cannot be renamed."""
    path = Path(path)
    if not path.exists():
        return
    folder = trash_dir()
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{time.time_ns()}.{path.name}.{uuid.uuid4().hex[:8]}"
    try:
        os.rename(path, target)
    except OSError:  # another file system, say: delete it here and now
        shutil.rmtree(path, ignore_errors=True)
        return
    _ensure_janitor()
    _wake.set()


def empty(now=None, idle=None):
    """Delete what is due: the oldest entries beyond WORKSPACE_TRASH_MAX_ENTRIES (all of
    them when the disk runs short), and, when no job runs here (`idle`), those older than
    WORKSPACE_TRASH_DELAY. Returns (deleted, seconds until the next entry is due; None:
    nothing to wait for, or wait until the process is idle)."""
    limits = settings.TRAINYARD
    delay = float(limits["WORKSPACE_TRASH_DELAY"])
    now_ns = time.time_ns() if now is None else int(now * 1e9)
    idle = _running == 0 if idle is None else idle
    folder = trash_dir()
    try:
        entries = sorted(_dated(os.scandir(folder)))
    except FileNotFoundError:
        return 0, None
    deleted = 0
    excess = max(0, len(entries) - int(limits["WORKSPACE_TRASH_MAX_ENTRIES"]))
    if entries and shutil.disk_usage(folder).free < limits["WORKSPACE_TRASH_MIN_FREE_BYTES"]:
        excess = len(entries)
    for index, (made_ns, path) in enumerate(entries):
        if index >= excess:
            if not idle:
                return deleted, None
            if now_ns - made_ns < delay * 1e9:
                return deleted, (made_ns + delay * 1e9 - now_ns) / 1e9
        shutil.rmtree(path, ignore_errors=True)
        deleted += 1
    return deleted, None


def _dated(entries):
    for entry in entries:
        stamp = entry.name.split(".", 1)[0]
        if stamp.isdigit():
            yield int(stamp), entry.path


def _ensure_janitor():
    global _thread
    with _lock:
        if _thread is None or not _thread.is_alive():
            _thread = threading.Thread(target=_janitor, name="workspace-trash", daemon=True)
            _thread.start()


def _janitor():
    try:  # Linux: a thread's own priority; deleting can always wait for the jobs
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError):
        pass
    while True:
        _wake.clear()
        try:
            _, due_in = empty()
        except Exception:  # a bad entry must not stop the thread: try again later
            due_in = 60.0
        # Sleep until the next entry is due, something is thrown away or the jobs end.
        _wake.wait(timeout=None if due_in is None else max(0.05, due_in))
