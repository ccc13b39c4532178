"""The per-host cache of what a job's `setup:` makes (a virtualenv, node_modules...).

Layout under TRAINYARD["CACHE_DIR"] (a local disk: flock does not hold over NFS):

    <repo>/<key>/paths.tar   the cached paths, as GNU tar wrote them
    <repo>/<key>/used        its mtime is the entry's last use (eviction is LRU)
    <repo>/<key>.lock        flock'd: shared to restore, exclusive to fill or evict
    <repo>/.tmp-<key>-*      a save (or an eviction) in progress, or its crashed leftover

Concurrency rule: an entry is restored under a shared lock on its key's lock file and
filled under an exclusive one, so one job per key and host runs the setup and the
others wait for it, then restore what it saved. Eviction only takes locks it gets at
once (LOCK_NB): an entry being restored or filled is never evicted. flock locks belong
to the open file, and each acquisition opens its own descriptor, so threads of one
worker exclude each other as separate processes do. Lock files are never deleted:
removing one that another job has open would let two holders in.

Why tar: restoring a ~64 MB, 2.7k-file virtualenv (ruff + pytest) into a fresh folder,
median of 9, warm page cache, tmpfs destination (the CPU cost): shutil.copytree 0.66 s,
`cp -a` 0.39 s, `tar -x` 0.19 s, Python's tarfile 1.42 s. On this host's ext4 (writes
dominate): 2.8 / 2.8 / 2.5-2.7 s warm, 5.8 / 4.2 / 3.1 s cold, as the archive is one
sequential read instead of thousands of small ones. Hardlinks are out: a job may
change a restored file in place.
"""

import fcntl
import hashlib
import os
import re
import secrets
import shutil
import subprocess
import time
from collections import namedtuple
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from django.conf import settings

ARCHIVE = "paths.tar"
TREE = "tree"  # the archive unpacked, for read-only binds into sandboxes
USED = "used"
TAR_TIMEOUT = 30 * 60
LOCK_TIMEOUT = 30 * 60
_KEY = re.compile(r"[0-9a-f]{64}")
_REPO = re.compile(r"[-a-zA-Z0-9_]+")  # Repository.name is a SlugField
_LEFTOVER = re.compile(r"\.tmp-([0-9a-f]{64})-")
# POSIX format keeps mtimes to the nanosecond, as `cp -a` would; per-file atime and
# ctime records would only make the archive bigger.
_TAR_CREATE = ["--format=posix", "--pax-option=delete=atime,delete=ctime", "-cf"]

Entry = namedtuple("Entry", "path size used")


def cache_key(workspace, key_files, salt):
    """The sha256 hex of the key files (names and bytes, in the given order; a missing
    one counts as missing) and `salt` (the setup commands, paths, platform...)."""
    if isinstance(key_files, (str, os.PathLike)):
        raise ValueError("cache key files must be a list of paths")
    workspace = Path(workspace)
    digest = hashlib.sha256(b"trainyard-cache-1\0")
    for name in key_files:
        rel = _relative(name)
        digest.update(_framed(b"file", rel.encode()))
        data = _key_file_bytes(workspace, rel)
        digest.update(b"missing;" if data is None else _framed(b"data", data))
    digest.update(_framed(b"salt", salt.encode()))
    return digest.hexdigest()


def _framed(tag, data):
    # Length-prefixed, so no two different inputs can run together into the same bytes.
    return tag + b" %d:" % len(data) + data


def _key_file_bytes(workspace, rel):
    path = workspace / rel
    real = path.resolve()
    if not real.is_relative_to(workspace.resolve()):
        raise ValueError(f"cache key file {rel} is a symlink out of the workspace")
    if not real.exists():
        return None
    if not real.is_file():
        raise ValueError(f"cache key file {rel} is not a file")
    return real.read_bytes()


def restore_or_fill(repository_name, key, paths, workspace, fill, log,
                    lock_timeout=LOCK_TIMEOUT):
    """Restore `paths` into `workspace` from the cache, or run `fill()` and save them.

    Returns "hit" (restored; `fill` not called), "filled" (fill returned True and the
    paths were saved), "failed" (fill returned False: nothing saved) or "uncached" (fill
    succeeded but nothing was saved: a path missing or unsafe, the entry over the size
    limit, tar failed, or the lock stayed busy for `lock_timeout` seconds and the setup
    ran beside the cache). An exception from `fill` propagates and saves nothing.

    Guarantees: an entry is published by one rename, so a crash mid-save leaves only a
    temporary folder that is never restored and is removed later; a restore that fails
    leaves none of `paths` in the workspace and the setup runs instead. Hostile repository
    names, keys and paths (absolute, `..`, under a symlink) raise ValueError; a path that
    is itself a symlink is cached as a symlink, never followed.
    """
    workspace = Path(workspace)
    paths = _checked_paths(workspace, paths)
    key = _checked_key(key)
    entry = _repo_dir(repository_name) / key
    lock = entry.with_name(f"{key}.lock")
    deadline = time.monotonic() + lock_timeout
    with _flock(lock, fcntl.LOCK_SH, deadline) as held:
        if held and _is_complete(entry) and _restore(entry, paths, workspace, log):
            return "hit"
    with _flock(lock, fcntl.LOCK_EX, deadline) as held:
        if not held:
            log(f"cache busy: {key[:8]} was still locked after {lock_timeout:g} s;"
                " running setup without the cache")
            return "uncached" if fill() else "failed"
        if _is_complete(entry):  # another job filled it while this one waited
            if _restore(entry, paths, workspace, log):
                return "hit"
            _discard(entry)  # unreadable: this job replaces it
        outcome = _fill_and_save(entry, paths, workspace, fill, log)
    if outcome == "filled":
        _evict(keep=entry, log=log)
    return outcome


@contextmanager
def mount_or_fill(repository_name, key, paths, workspace, fill, log, lock_timeout=LOCK_TIMEOUT):
    """For a sandboxed job: yields (outcome, binds). On a hit nothing is copied: `binds`
    are (host folder, path relative to the workspace) pairs that the sandbox shows
    read-only in place, from an unpacked tree kept beside the entry; the entry stays
    share-locked (so never evicted) until the block ends. Otherwise the outcomes of
    `restore_or_fill`, with no binds: the setup's own files are in the workspace."""
    workspace = Path(workspace)
    paths = _checked_paths(workspace, paths)
    entry = _repo_dir(repository_name) / _checked_key(key)
    lock = entry.with_name(f"{entry.name}.lock")
    deadline = time.monotonic() + lock_timeout
    for _ in range(2):
        with _flock(lock, fcntl.LOCK_SH, deadline) as held:
            if held and _is_complete(entry) and (entry / TREE).is_dir():
                started = time.monotonic()
                (entry / USED).touch()
                log(f"cache hit: {', '.join(paths)} shown read-only from {entry.name[:8]}"
                    f" ({_human((entry / ARCHIVE).stat().st_size)}, "
                    f"{time.monotonic() - started:.2f} s)")
                yield "hit", [(entry / TREE / rel, rel) for rel in paths]
                return
        if not _unpack_tree(entry, lock, deadline, log):
            break
    yield restore_or_fill(repository_name, entry.name, paths, workspace, fill, log,
                          lock_timeout=max(1, deadline - time.monotonic())), []


def _unpack_tree(entry, lock, deadline, log):
    """Unpack a complete entry's archive once, into `tree/` (by rename: whole or absent).
    False when there is no complete entry to unpack."""
    with _flock(lock, fcntl.LOCK_EX, deadline) as held:
        if not held or not _is_complete(entry):
            return False
        if (entry / TREE).is_dir():
            return True
        tmp = entry / f".{TREE}-{secrets.token_hex(4)}"
        tmp.mkdir()
        error = _tar("-xpf", str(entry / ARCHIVE), "--no-same-owner", "-C", str(tmp))
        if error:
            shutil.rmtree(tmp, ignore_errors=True)
            log(f"cache unpack failed ({entry.name[:8]}): {error}")
            return False
        os.rename(tmp, entry / TREE)
        return True


# Validation ---------------------------------------------------------------------------

def _relative(path):
    text = os.fspath(path)
    pure = PurePosixPath(text)
    if not text or "\0" in text or pure.is_absolute() or ".." in pure.parts or not pure.parts:
        raise ValueError(f"cache path {text!r} must be relative to the workspace, without '..'")
    return str(pure)


def _checked_paths(workspace, paths):
    if isinstance(paths, (str, os.PathLike)):
        raise ValueError("cache paths must be a list of paths")
    clean = list(dict.fromkeys(_relative(p) for p in paths))
    if not clean:
        raise ValueError("cache needs at least one path")
    for rel in clean:
        if problem := _symlinked_parent(workspace, rel):
            raise ValueError(problem)
    return clean


def _symlinked_parent(workspace, rel):
    # tar -C follows a symlinked parent folder, out of the workspace: refuse those.
    current = workspace
    for part in PurePosixPath(rel).parts[:-1]:
        current = current / part
        if current.is_symlink():
            return f"cache path {rel}: {current.relative_to(workspace)} is a symlink"
    return ""


def _checked_key(key):
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise ValueError(f"not a cache key (sha256 hex): {key!r}")
    return key


def _repo_dir(name):
    if not isinstance(name, str) or not _REPO.fullmatch(name):
        raise ValueError(f"not a repository name: {name!r}")
    folder = _root() / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _root():
    return Path(settings.TRAINYARD.get("CACHE_DIR") or Path(settings.VAR_DIR) / "cache")


def _max_bytes():
    return int(settings.TRAINYARD.get("CACHE_MAX_BYTES", 5 * 1024**3))


# Locks --------------------------------------------------------------------------------

@contextmanager
def _flock(path, mode, deadline):
    """Yields True once `path` is locked (`mode`: LOCK_SH or LOCK_EX), False if that did
    not happen by `deadline` (time.monotonic). flock itself cannot time out: poll."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        yield _acquire(fd, mode, deadline)
    finally:
        os.close(fd)  # releases the lock, also when the body raised


def _acquire(fd, mode, deadline):
    pause = 0.01
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(pause, left))
            pause = min(pause * 2, 0.25)


# Restore and save ---------------------------------------------------------------------

def _is_complete(entry):
    # Only a renamed-into-place entry has this name; temporary folders never do.
    return (entry / ARCHIVE).is_file()


def _restore(entry, paths, workspace, log):
    started = time.monotonic()
    for rel in paths:
        _clear(workspace / rel)  # the cached tree replaces whatever the checkout had there
    error = _tar("-xpf", str(entry / ARCHIVE), "--no-same-owner", "-C", str(workspace))
    if error:
        for rel in paths:
            _clear(workspace / rel)  # no half-restored tree for the setup to trip on
        log(f"cache restore failed ({entry.name[:8]}): {error}; running setup")
        return False
    (entry / USED).touch()  # the entry's last use, for LRU eviction
    size = (entry / ARCHIVE).stat().st_size
    log(f"cache hit: {', '.join(paths)} restored from {entry.name[:8]}"
        f" ({_human(size)}, {time.monotonic() - started:.2f} s)")
    return True


def _fill_and_save(entry, paths, workspace, fill, log):
    log("cache miss: running setup")
    if not fill():
        log("cache not saved: setup failed")
        return "failed"
    missing = [rel for rel in paths if not os.path.lexists(workspace / rel)]
    if missing:
        log(f"cache not saved: {', '.join(missing)} missing after setup")
        return "uncached"
    for rel in paths:
        if problem := _symlinked_parent(workspace, rel):  # the setup may have made one
            log(f"cache not saved: {problem}")
            return "uncached"
    return _save(entry, paths, workspace, log)


def _save(entry, paths, workspace, log):
    """Archive into a temporary folder beside the entry, then rename it into place."""
    _remove_leftovers(entry.parent, only_key=entry.name)  # the exclusive lock is ours
    started = time.monotonic()
    tmp = entry.with_name(f".tmp-{entry.name}-{secrets.token_hex(4)}")
    tmp.mkdir()
    try:
        error = _tar(*_TAR_CREATE, str(tmp / ARCHIVE), "-C", str(workspace), "--", *paths)
        if error:
            log(f"cache not saved: {error}")
            return "uncached"
        size = (tmp / ARCHIVE).stat().st_size
        if size > _max_bytes():
            log(f"cache not saved: {_human(size)} is over the cache's whole"
                f" {_human(_max_bytes())}")
            return "uncached"
        (tmp / USED).touch()
        _fsync(tmp / ARCHIVE)  # a power cut must not publish an empty archive either
        _fsync(tmp)
        os.rename(tmp, entry)
        _fsync(entry.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already once renamed
    log(f"cache saved: {', '.join(paths)} as {entry.name[:8]}"
        f" ({_human(size)}, {time.monotonic() - started:.2f} s)")
    return "filled"


def _tar(*args):
    """Runs GNU tar; returns "" on success, else what went wrong."""
    try:
        proc = subprocess.run(["tar", *args], capture_output=True, text=True,
                              timeout=TAR_TIMEOUT)
    except subprocess.TimeoutExpired:
        return f"tar took over {TAR_TIMEOUT} s"
    if proc.returncode:
        return (proc.stderr.strip() or f"tar exited with {proc.returncode}")[-2000:]
    return ""


def _clear(path):
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)  # does not follow symlinks inside


def _fsync(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# Eviction -----------------------------------------------------------------------------

def _evict(keep, log):
    """Removes least recently used entries until the cache is under its limit. One
    eviction at a time per host, so two never count the same entries."""
    root = _root()
    with _flock(root / ".evict.lock", fcntl.LOCK_EX, time.monotonic() + 60) as held:
        if not held:
            return
        entries = sorted(_entries(root), key=lambda e: e.used)
        total = sum(e.size for e in entries)
        for entry in entries:
            if total <= _max_bytes():
                break
            if entry.path == keep or not _evict_one(entry.path):
                continue  # just saved, or being restored right now
            total -= entry.size
            log(f"cache evicted: {entry.path.parent.name}/{entry.path.name[:8]}"
                f" ({_human(entry.size)}, last used {_ago(entry.used)})")
        for repo_dir in _repo_dirs(root):
            _remove_leftovers(repo_dir)


def _repo_dirs(root):
    return [d for d in root.iterdir() if _REPO.fullmatch(d.name) and not d.is_symlink()
            and d.is_dir()]


def _entries(root):
    for repo_dir in _repo_dirs(root):
        for path in repo_dir.iterdir():
            if not _KEY.fullmatch(path.name):
                continue
            try:
                size = (path / ARCHIVE).stat().st_size * (2 if (path / TREE).is_dir() else 1)
                yield Entry(path, size, (path / USED).stat().st_mtime)
            except FileNotFoundError:
                continue  # evicted meanwhile by a save elsewhere


def _evict_one(entry):
    lock = entry.with_name(f"{entry.name}.lock")
    with _flock(lock, fcntl.LOCK_EX, deadline=0) as held:
        return held and _discard(entry)


def _discard(entry):
    """Renames the entry away first: a crash halfway through deleting it must not leave
    a partial entry under its name."""
    gone = entry.with_name(f".tmp-{entry.name}-gone-{secrets.token_hex(4)}")
    try:
        os.rename(entry, gone)
    except FileNotFoundError:
        return False
    shutil.rmtree(gone, ignore_errors=True)
    return True


def _remove_leftovers(repo_dir, only_key=None):
    """Deletes temporary folders of crashed saves or evictions. With `only_key`, the
    caller holds that key's exclusive lock; otherwise a folder goes only if its key's
    lock is free (no save of it is running)."""
    for path in list(repo_dir.iterdir()):
        match = _LEFTOVER.match(path.name)
        if not match or (only_key and match[1] != only_key):
            continue
        if only_key:
            shutil.rmtree(path, ignore_errors=True)
            continue
        with _flock(repo_dir / f"{match[1]}.lock", fcntl.LOCK_EX, deadline=0) as held:
            if held:
                shutil.rmtree(path, ignore_errors=True)


def _human(size):
    if size < 1024:
        return f"{size} B"
    for unit in ("KiB", "MiB", "GiB"):
        size /= 1024
        if size < 1024 or unit == "GiB":
            return f"{size:.1f} {unit}"


def _ago(timestamp):
    seconds = max(0, time.time() - timestamp)
    for unit, length in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= length:
            return f"{seconds / length:.1f} {unit} ago"
    return f"{seconds:.0f} s ago"
