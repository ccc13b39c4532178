"""Job checkouts are thrown away later, not as the job ends.

Deleting a checkout costs the host more than it seems: on ext4 every unlink and rmdir
goes through the journal, and for 30 s a freed inode makes each new file of its group
scan past it (`recently_deleted`), so deleting checkouts while others are being made
slows every checkout of a burst of builds. A job's folder is therefore renamed into
WORKSPACE_DIR/trash (one rename: the job's path is free again at once), and a thread of
the worker process deletes it WORKSPACE_TRASH_DELAY seconds later, when the burst has
usually passed. The trash never holds more than WORKSPACE_TRASH_MAX_ENTRIES folders: the
oldest beyond that go at once, so a steady stream of builds cannot fill the disk with it.

Entries are named `<unix time in ns>.<name>.<random>`: any worker of the host (or one
started after a crash) knows from the name when an entry is due, and two deleting one
entry at once is harmless (errors are ignored; what is left goes next time).
"""

import os
import shutil
import threading
import time
import uuid
from pathlib import Path

from django.conf import settings

_lock = threading.Lock()
_wake = threading.Event()
_thread = None


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


def empty(now=None):
    """Delete what is due: entries older than WORKSPACE_TRASH_DELAY, and the oldest
    beyond WORKSPACE_TRASH_MAX_ENTRIES. Returns (deleted, seconds until the next entry is due or None)."""
    delay = float(settings.TRAINYARD["WORKSPACE_TRASH_DELAY"])
    keep_at_most = int(settings.TRAINYARD["WORKSPACE_TRASH_MAX_ENTRIES"])
    now_ns = time.time_ns() if now is None else int(now * 1e9)
    try:
        entries = sorted(_dated(os.scandir(trash_dir())))
    except FileNotFoundError:
        return 0, None
    deleted = 0
    excess = max(0, len(entries) - keep_at_most)
    for index, (made_ns, path) in enumerate(entries):
        if index >= excess and now_ns - made_ns < delay * 1e9:
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
    while True:
        _wake.clear()
        try:
            _, due_in = empty()
        except Exception:  # a bad entry must not stop the thread: try again later
            due_in = 60.0
        # Sleep until the next entry is due, or until something new is thrown away.
        _wake.wait(timeout=None if due_in is None else max(0.05, due_in))
