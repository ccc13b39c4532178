"""The per-host setup cache: real files in tmp_path, real GNU tar, real flock."""

import fcntl
import os
import re
import threading
import time

import pytest

from pipeline.services import cache
from tests.helpers import race, wait_until

SALT = '{"setup": ["python3 -m venv .venv"], "paths": [".venv"], "platform": "linux-x86_64"}'


@pytest.fixture
def cache_dir(settings, tmp_path):
    folder = tmp_path / "cache"
    settings.TRAINYARD = {**settings.TRAINYARD, "CACHE_DIR": folder,
                          "CACHE_MAX_BYTES": 50 * 1024**2}
    return folder


@pytest.fixture
def workspaces(tmp_path):
    """Fresh checkouts, as each job of a build gets: workspaces("a") -> tmp_path/ws-a."""

    def make(name, requirements="ruff==0.9\npytest==8.3\n"):
        workspace = tmp_path / f"ws-{name}"
        workspace.mkdir()
        (workspace / "requirements-dev.txt").write_text(requirements)
        return workspace

    return make


def make_venv(workspace):
    """What a `python3 -m venv .venv && pip install ...` leaves, in miniature."""
    venv = workspace / ".venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "ruff").write_bytes(b"\x7fELF" + bytes(range(256)) * 40)
    (venv / "bin" / "ruff").chmod(0o755)
    (venv / "bin" / "python").symlink_to("/usr/bin/python3")  # out of the tree: a link still
    (venv / "lib" / "site-packages" / "pytest").mkdir(parents=True)
    (venv / "lib" / "site-packages" / "pytest" / "__init__.py").write_text("VERSION = 8\n")
    (venv / "lib64").symlink_to("lib")
    (venv / "include").mkdir()
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\n")


class Setup:
    """A recording `fill`: counts its runs, makes the files, returns `result`."""

    def __init__(self, make=make_venv, result=True):
        self.make, self.result, self.calls = make, result, 0
        self.lock = threading.Lock()

    def __call__(self, workspace):
        with self.lock:
            self.calls += 1
        self.make(workspace)
        return self.result


def run_job(workspace, setup, lines=None, key=None, paths=(".venv",), **kwargs):
    key = key or cache.cache_key(workspace, ["requirements-dev.txt"], SALT)
    log = lines.append if lines is not None else (lambda text: None)
    return cache.restore_or_fill("app", key, list(paths), workspace,
                                 fill=lambda: setup(workspace), log=log, **kwargs)


def tree(root):
    """Everything about a folder a job could notice: kinds, modes, targets, bytes, mtimes."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, root)
            info = os.lstat(path)
            if os.path.islink(path):
                found[rel] = ("link", os.readlink(path))
            elif os.path.isdir(path):
                found[rel] = ("dir", info.st_mode)
            else:
                with open(path, "rb") as handle:
                    found[rel] = ("file", info.st_mode, handle.read(), info.st_mtime_ns)
    return found


def entry_of(cache_dir, key):
    return cache_dir / "app" / key


# Keys ---------------------------------------------------------------------------------

def test_it_keys_on_key_file_contents_and_salt(workspaces):
    a, b, c = workspaces("a"), workspaces("b"), workspaces("c", requirements="ruff==1.0\n")
    key = cache.cache_key(a, ["requirements-dev.txt"], SALT)

    assert re.fullmatch(r"[0-9a-f]{64}", key)
    assert cache.cache_key(b, ["requirements-dev.txt"], SALT) == key
    assert cache.cache_key(c, ["requirements-dev.txt"], SALT) != key
    assert cache.cache_key(a, ["requirements-dev.txt"], SALT + " ") != key


def test_it_keys_on_key_file_names_and_order(workspaces):
    workspace = workspaces("a")
    (workspace / "constraints.txt").write_text("ruff==0.9\npytest==8.3\n")
    both = ["requirements-dev.txt", "constraints.txt"]

    assert cache.cache_key(workspace, both, SALT) != cache.cache_key(workspace, both[::-1], SALT)
    assert (cache.cache_key(workspace, ["requirements-dev.txt"], SALT)
            != cache.cache_key(workspace, ["constraints.txt"], SALT))


def test_it_counts_a_missing_key_file_as_missing(workspaces):
    workspace = workspaces("a")
    missing = cache.cache_key(workspace, ["package-lock.json"], SALT)
    (workspace / "package-lock.json").write_text("")

    assert missing == cache.cache_key(workspaces("b"), ["package-lock.json"], SALT)
    assert missing != cache.cache_key(workspace, ["package-lock.json"], SALT)


def test_it_refuses_a_key_file_symlinked_out_of_the_workspace(workspaces, tmp_path):
    (tmp_path / "secret").write_text("hunter2")
    workspace = workspaces("a")
    (workspace / "requirements.txt").symlink_to(tmp_path / "secret")

    with pytest.raises(ValueError, match="out of the workspace"):
        cache.cache_key(workspace, ["requirements.txt"], SALT)
    with pytest.raises(ValueError):
        cache.cache_key(workspace, ["../secret"], SALT)


# Miss, fill, hit ----------------------------------------------------------------------

def test_it_fills_on_a_miss_and_saves(cache_dir, workspaces):
    workspace, setup, lines = workspaces("a"), Setup(), []
    key = cache.cache_key(workspace, ["requirements-dev.txt"], SALT)

    assert run_job(workspace, setup, lines) == "filled"

    assert setup.calls == 1
    assert (entry_of(cache_dir, key) / cache.ARCHIVE).is_file()
    assert lines[0] == "cache miss: running setup"
    assert re.fullmatch(rf"cache saved: \.venv as {key[:8]} \(\d+\.\d KiB, \d+\.\d\d s\)",
                        lines[1])


def test_it_restores_a_hit_without_running_setup(cache_dir, workspaces):
    first, second, setup, lines = workspaces("a"), workspaces("b"), Setup(), []
    run_job(first, setup)

    assert run_job(second, setup, lines) == "hit"

    assert setup.calls == 1
    assert tree(second / ".venv") == tree(first / ".venv")
    assert os.readlink(second / ".venv" / "bin" / "python") == "/usr/bin/python3"
    key = cache.cache_key(first, ["requirements-dev.txt"], SALT)
    assert re.fullmatch(rf"cache hit: \.venv restored from {key[:8]} \(\d+\.\d KiB, \d+\.\d\d s\)",
                        lines[0])


def test_it_restores_copies_a_job_may_change(cache_dir, workspaces):
    first, second, third, setup = workspaces("a"), workspaces("b"), workspaces("c"), Setup()
    run_job(first, setup)
    run_job(second, setup)
    changed = second / ".venv" / "lib" / "site-packages" / "pytest" / "__init__.py"

    assert changed.stat().st_nlink == 1  # a copy, not a hardlink into the cache
    changed.write_text("VERSION = 'broken'\n")
    run_job(third, setup)

    assert tree(third / ".venv") == tree(first / ".venv")


def test_it_replaces_what_the_checkout_had_at_a_cached_path(cache_dir, workspaces, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("mine")
    run_job(workspaces("a"), Setup())
    workspace = workspaces("b")
    (workspace / ".venv").symlink_to(outside)  # committed by a hostile branch

    assert run_job(workspace, Setup()) == "hit"

    assert not (workspace / ".venv").is_symlink()
    assert (workspace / ".venv" / "pyvenv.cfg").is_file()
    assert [p.name for p in outside.iterdir()] == ["keep"]


def test_it_restores_exactly_the_cached_tree(cache_dir, workspaces):
    run_job(workspaces("a"), Setup())
    workspace = workspaces("b")
    (workspace / ".venv").mkdir()
    (workspace / ".venv" / "stale.txt").write_text("from an older commit")

    assert run_job(workspace, Setup()) == "hit"

    assert not (workspace / ".venv" / "stale.txt").exists()


# Failures and crashes -----------------------------------------------------------------

def test_it_saves_nothing_when_setup_fails(cache_dir, workspaces):
    lines, failing = [], Setup(result=False)

    assert run_job(workspaces("a"), failing, lines) == "failed"

    assert lines[-1] == "cache not saved: setup failed"
    assert list((cache_dir / "app").iterdir()) == [next((cache_dir / "app").glob("*.lock"))]
    assert run_job(workspaces("b"), Setup()) == "filled"


def test_it_saves_nothing_when_setup_raises(cache_dir, workspaces):
    def explode(workspace):
        make_venv(workspace)
        raise RuntimeError("sandbox died")

    with pytest.raises(RuntimeError, match="sandbox died"):
        run_job(workspaces("a"), Setup(make=explode))

    setup = Setup()
    assert run_job(workspaces("b"), setup) == "filled"
    assert setup.calls == 1


def test_it_never_restores_a_half_saved_entry(cache_dir, workspaces):
    first = workspaces("a")
    key = cache.cache_key(first, ["requirements-dev.txt"], SALT)
    run_job(first, Setup())
    entry = entry_of(cache_dir, key)
    leftover = entry.with_name(f".tmp-{key}-dead")
    entry.rename(leftover)  # a worker killed just before its rename
    setup = Setup()

    assert run_job(workspaces("b"), setup) == "filled"

    assert setup.calls == 1
    assert not leftover.exists()


def test_it_leaves_nothing_behind_when_the_rename_fails(cache_dir, workspaces, monkeypatch):
    def no_rename(src, dst):
        raise OSError("disk went away")

    monkeypatch.setattr(cache.os, "rename", no_rename)
    with pytest.raises(OSError, match="disk went away"):
        run_job(workspaces("a"), Setup())
    monkeypatch.undo()

    assert sorted(p.suffix for p in (cache_dir / "app").iterdir()) == [".lock"]


def test_it_replaces_an_unreadable_entry(cache_dir, workspaces):
    first = workspaces("a")
    key = cache.cache_key(first, ["requirements-dev.txt"], SALT)
    run_job(first, Setup())
    (entry_of(cache_dir, key) / cache.ARCHIVE).write_bytes(b"not a tar archive" * 100)
    workspace, setup, lines = workspaces("b"), Setup(), []

    assert run_job(workspace, setup, lines) == "filled"

    assert setup.calls == 1
    assert any(line.startswith("cache restore failed") for line in lines)
    assert (workspace / ".venv" / "pyvenv.cfg").is_file()
    assert run_job(workspaces("c"), setup) == "hit"


def test_it_reports_paths_the_setup_did_not_make(cache_dir, workspaces):
    lines = []

    outcome = run_job(workspaces("a"), Setup(), lines, paths=[".venv", "node_modules"])

    assert outcome == "uncached"
    assert lines[-1] == "cache not saved: node_modules missing after setup"


# Concurrency --------------------------------------------------------------------------

def test_it_runs_setup_once_for_concurrent_jobs(cache_dir, workspaces):
    jobs = [workspaces(str(n)) for n in range(5)]
    arrived = []

    def slow_setup(workspace):
        # Hold the lock until every job has asked for the cache.
        wait_until(lambda: len(arrived) == len(jobs), timeout=10, message="all jobs to ask")
        make_venv(workspace)

    setup = Setup(make=slow_setup)

    def job(workspace):
        arrived.append(workspace)
        return run_job(workspace, setup)

    outcomes = race(job, [(w,) for w in jobs])

    assert setup.calls == 1
    assert sorted(outcomes) == ["filled", "hit", "hit", "hit", "hit"]
    filled = jobs[outcomes.index("filled")]
    for workspace in jobs:
        assert tree(workspace / ".venv") == tree(filled / ".venv")


def test_it_runs_setup_beside_the_cache_when_the_lock_stays_busy(cache_dir, workspaces):
    workspace, setup, lines = workspaces("a"), Setup(), []
    key = cache.cache_key(workspace, ["requirements-dev.txt"], SALT)
    (cache_dir / "app").mkdir(parents=True)
    with open(cache_dir / "app" / f"{key}.lock", "w") as other_job:
        fcntl.flock(other_job, fcntl.LOCK_EX)  # another job's endless setup

        assert run_job(workspace, setup, lines, lock_timeout=0.2) == "uncached"

    assert setup.calls == 1
    assert lines[0].startswith(f"cache busy: {key[:8]} was still locked after 0.2 s")
    assert not entry_of(cache_dir, key).exists()


# Size limit and eviction --------------------------------------------------------------

def blob_setup(size):
    def make(workspace):
        (workspace / ".venv").mkdir()
        (workspace / ".venv" / "blob").write_bytes(os.urandom(size))

    return Setup(make=make)


def fill_entry(workspaces, name, size=100 * 1024):
    """An entry of about `size` bytes under its own key, last used an hour ago."""
    workspace = workspaces(name, requirements=f"{name}\n")
    key = cache.cache_key(workspace, ["requirements-dev.txt"], SALT)
    assert run_job(workspace, blob_setup(size)) == "filled"
    return key


def age(cache_dir, key, seconds):
    used = time.time() - seconds
    os.utime(entry_of(cache_dir, key) / cache.USED, (used, used))


def cache_bytes(cache_dir):
    return sum(p.stat().st_size for p in cache_dir.glob("app/*/*"))


def test_it_evicts_the_least_recently_used_entries(cache_dir, workspaces, settings):
    settings.TRAINYARD = {**settings.TRAINYARD, "CACHE_MAX_BYTES": 250 * 1024}
    older, old = fill_entry(workspaces, "older"), fill_entry(workspaces, "old")
    age(cache_dir, older, 7200)
    age(cache_dir, old, 3600)
    run_job(workspaces("older-again", requirements="older\n"), Setup())  # a hit: used now

    newest = fill_entry(workspaces, "newest")

    assert not entry_of(cache_dir, old).exists()
    assert entry_of(cache_dir, older).exists() and entry_of(cache_dir, newest).exists()
    assert cache_bytes(cache_dir) <= 250 * 1024
    assert not list((cache_dir / "app").glob(".tmp-*"))


def test_it_logs_what_it_evicts(cache_dir, workspaces, settings):
    settings.TRAINYARD = {**settings.TRAINYARD, "CACHE_MAX_BYTES": 150 * 1024}
    old = fill_entry(workspaces, "old")
    age(cache_dir, old, 3 * 3600)
    lines = []

    workspace = workspaces("new", requirements="new\n")
    key = cache.cache_key(workspace, ["requirements-dev.txt"], SALT)
    run_job(workspace, blob_setup(100 * 1024), lines)

    assert entry_of(cache_dir, key).exists()
    assert re.fullmatch(rf"cache evicted: app/{old[:8]} \(\d+\.\d KiB, last used 3\.0 h ago\)",
                        lines[-1])


def test_it_never_evicts_an_entry_being_restored(cache_dir, workspaces, settings):
    settings.TRAINYARD = {**settings.TRAINYARD, "CACHE_MAX_BYTES": 250 * 1024}
    busy, idle = fill_entry(workspaces, "busy"), fill_entry(workspaces, "idle")
    age(cache_dir, busy, 7200)
    age(cache_dir, idle, 3600)

    with open(cache_dir / "app" / f"{busy}.lock") as restoring:
        fcntl.flock(restoring, fcntl.LOCK_SH)  # a job restoring it right now
        fill_entry(workspaces, "new")

    assert entry_of(cache_dir, busy).exists()
    assert not entry_of(cache_dir, idle).exists()


def test_it_does_not_save_an_entry_over_the_whole_limit(cache_dir, workspaces, settings):
    settings.TRAINYARD = {**settings.TRAINYARD, "CACHE_MAX_BYTES": 64 * 1024}
    lines = []

    assert run_job(workspaces("a"), blob_setup(100 * 1024), lines) == "uncached"

    assert re.fullmatch(r"cache not saved: \d+\.\d KiB is over the cache's whole 64\.0 KiB",
                        lines[-1])
    assert sorted(p.suffix for p in (cache_dir / "app").iterdir()) == [".lock"]


# Hostile input ------------------------------------------------------------------------

def test_it_keeps_a_symlinked_path_as_a_symlink(cache_dir, workspaces, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("hunter2")

    def link_out(workspace):
        (workspace / ".venv").symlink_to(outside)

    first = workspaces("a")
    assert run_job(first, Setup(make=link_out)) == "filled"
    key = cache.cache_key(first, ["requirements-dev.txt"], SALT)
    assert b"hunter2" not in (entry_of(cache_dir, key) / cache.ARCHIVE).read_bytes()

    second = workspaces("b")
    assert run_job(second, Setup()) == "hit"
    assert os.readlink(second / ".venv") == str(outside)


def test_it_refuses_paths_under_a_symlinked_folder(cache_dir, workspaces, tmp_path):
    (tmp_path / "outside").mkdir()
    workspace, setup = workspaces("a"), Setup()
    (workspace / "build").symlink_to(tmp_path / "outside")

    with pytest.raises(ValueError, match="build is a symlink"):
        run_job(workspace, setup, paths=["build/out"])
    assert setup.calls == 0


def test_it_does_not_save_under_a_folder_the_setup_symlinked(cache_dir, workspaces, tmp_path):
    (tmp_path / "outside" / "out").mkdir(parents=True)
    (tmp_path / "outside" / "out" / "secret").write_text("hunter2")
    lines = []

    def link_out(workspace):
        (workspace / "build").symlink_to(tmp_path / "outside")

    outcome = run_job(workspaces("a"), Setup(make=link_out), lines, paths=["build/out"])

    assert outcome == "uncached"
    assert lines[-1] == "cache not saved: cache path build/out: build is a symlink"
    assert not list(cache_dir.rglob(cache.ARCHIVE))


@pytest.mark.parametrize("path", ["../x", "/etc", ".venv/../../x", "", ".", "./"])
def test_it_refuses_hostile_paths(cache_dir, workspaces, path):
    setup = Setup()
    with pytest.raises(ValueError):
        run_job(workspaces("a"), setup, paths=[path])
    assert setup.calls == 0


@pytest.mark.parametrize("name", ["../app", "/etc", "a/b", ".hidden", ""])
def test_it_refuses_hostile_repository_names(cache_dir, workspaces, name):
    with pytest.raises(ValueError, match="repository name"):
        cache.restore_or_fill(name, "0" * 64, [".venv"], workspaces("a"), fill=Setup(),
                              log=print)
    assert not cache_dir.exists() or not any(cache_dir.iterdir())


@pytest.mark.parametrize("key", ["../" + "0" * 61, "0" * 63, "A" * 64, "0" * 64 + "/x"])
def test_it_refuses_what_is_not_a_key(cache_dir, workspaces, key):
    with pytest.raises(ValueError, match="not a cache key"):
        cache.restore_or_fill("app", key, [".venv"], workspaces("a"), fill=Setup(), log=print)


def test_it_shows_a_hit_in_place_without_copying_and_keeps_the_entry_while_shown(tmp_path, settings):
    settings.TRAINYARD = {**settings.TRAINYARD, "CACHE_DIR": tmp_path / "cache"}
    first, second = tmp_path / "one", tmp_path / "two"
    for workspace in (first, second):
        workspace.mkdir()
        (workspace / "deps.txt").write_text("tool==1\n")

    def fill():
        (first / ".venv").mkdir()
        (first / ".venv" / "tool").write_text("built\n")
        return True

    key = cache.cache_key(first, ["deps.txt"], salt="s")
    with cache.mount_or_fill("app", key, [".venv"], first, fill, lambda text: None) as (outcome, binds):
        assert (outcome, binds) == ("filled", [])
    lines = []
    with cache.mount_or_fill("app", key, [".venv"], second, lambda: 1 / 0, lines.append) as (outcome, binds):
        assert outcome == "hit" and not (second / ".venv").exists()  # nothing copied
        [(source, inside)] = binds
        assert inside == ".venv" and (source / "tool").read_text() == "built\n"
        settings.TRAINYARD = {**settings.TRAINYARD, "CACHE_MAX_BYTES": 1}
        cache._evict(keep=None, log=lines.append)  # in use: never evicted under a job
        assert (source / "tool").exists()
    assert "shown read-only" in lines[0]
