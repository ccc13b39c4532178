"""A job's checkout leaves the job's path at once and is deleted later (trash): the
rename, what is due, waiting while jobs run, the bound on what waits, and the thread
that deletes it."""

import json
import shutil
import time

import pytest

from pipeline.services import trash
from pipeline.services.builds import request_build
from pipeline.services.runner import JobWorkspace
from tests.helpers import build_ended, require, wait_until


def a_checkout(path, files=3):
    (path / "src" / ".git").mkdir(parents=True)
    for i in range(files):
        (path / "src" / f"f{i}.txt").write_text("x")
    return path


def entries():
    return sorted(trash.trash_dir().iterdir()) if trash.trash_dir().exists() else []


def test_a_discarded_folder_leaves_its_path_at_once_and_goes_when_due(settings, tmp_path):
    settings.TRAINYARD = {**settings.TRAINYARD, "WORKSPACE_TRASH_DELAY": 60}
    job = a_checkout(tmp_path / "workspaces" / "jobs" / "7")
    trash.discard(job)
    assert not job.exists()
    [entry] = entries()
    assert entry.name.split(".")[1] == "7" and (entry / "src" / "f0.txt").exists()
    made = int(entry.name.split(".")[0]) / 1e9
    assert trash.empty(now=made + 59, idle=True)[0] == 0 and entry.exists()
    assert trash.empty(now=made + 61, idle=False) == (0, None) and entry.exists()
    assert trash.empty(now=made + 61, idle=True) == (1, None)
    assert not entry.exists()


def test_due_entries_wait_until_no_job_runs(settings, tmp_path):
    settings.TRAINYARD = {**settings.TRAINYARD, "WORKSPACE_TRASH_DELAY": 0}
    with trash.job_running():
        trash.discard(a_checkout(tmp_path / "workspaces" / "jobs" / "5"))
        with trash.job_running():
            pass  # another job ended; this one still runs
        assert trash.empty() == (0, None) and len(entries()) == 1
    wait_until(lambda: entries() == [], message="the janitor to empty the trash once idle")


def test_the_oldest_go_at_once_beyond_the_bound(settings, tmp_path):
    settings.TRAINYARD = {**settings.TRAINYARD, "WORKSPACE_TRASH_DELAY": 3600,
                          "WORKSPACE_TRASH_MAX_ENTRIES": 2}
    for i in range(4):
        trash.discard(a_checkout(tmp_path / "workspaces" / "jobs" / str(i)))
    wait_until(lambda: len(entries()) == 2, message="the trash to hold two entries")
    assert sorted(e.name.split(".")[1] for e in entries()) == ["2", "3"]
    deleted, due_in = trash.empty()
    assert deleted == 0 and 3500 < due_in <= 3600
    with trash.job_running():  # beyond the bound even while jobs run
        trash.discard(a_checkout(tmp_path / "workspaces" / "jobs" / "4"))
        wait_until(lambda: sorted(e.name.split(".")[1] for e in entries()) == ["3", "4"],
                   message="the oldest to go while a job runs")


def test_a_missing_folder_is_fine_and_leftovers_of_a_crash_are_swept(settings, tmp_path):
    settings.TRAINYARD = {**settings.TRAINYARD, "WORKSPACE_TRASH_DELAY": 0}
    trash.discard(tmp_path / "workspaces" / "jobs" / "nothing")
    assert entries() == []
    # Left by a worker that died before deleting it (an old stamp), and a new one.
    left = a_checkout(trash.trash_dir() / f"{time.time_ns() - 10**12}.3.abcd")
    trash.discard(a_checkout(tmp_path / "workspaces" / "jobs" / "4"))
    wait_until(lambda: entries() == [], message="the janitor to empty the trash")
    assert not left.exists()


def test_a_new_checkout_for_a_job_discards_what_an_earlier_attempt_left(repository, git_repo,
                                                                     settings):
    settings.TRAINYARD = {**settings.TRAINYARD, "WORKSPACE_TRASH_DELAY": 60}
    sha = git_repo.commit({"a.txt": "a"})
    workspace = JobWorkspace(settings.TRAINYARD["WORKSPACE_DIR"] / "jobs" / "9")
    workspace.create(repository, sha)
    (workspace.src / "left-by-attempt-1").write_text("x")
    workspace.create(repository, sha)
    assert not (workspace.src / "left-by-attempt-1").exists()
    assert (workspace.src / "a.txt").read_text() == "a"
    assert [e.name.split(".")[1] for e in entries()] == ["9"]


@pytest.mark.django_db(transaction=True)
def test_a_real_builds_checkouts_leave_their_paths_and_are_deleted_later(worker, repository,
                                                                       git_repo, settings):
    require(shutil.which("bwrap"), "bubblewrap (apt-get install bubblewrap)")
    settings.TRAINYARD = {**settings.TRAINYARD, "WORKSPACE_TRASH_DELAY": 1}
    spec = {"checks": {"a": ["true"], "b": ["true"]}}
    git_repo.commit({"trainyard.yml": json.dumps(spec)}, branch="feature/trash")
    build, _ = request_build(repository, "feature/trash")
    build = build_ended(build)
    assert build.status == "passed"
    jobs = settings.TRAINYARD["WORKSPACE_DIR"] / "jobs"
    wait_until(lambda: not any(jobs.iterdir()), message="the jobs' paths to be free")
    wait_until(lambda: entries() == [], message="the trash to be emptied after its delay")


def test_everything_goes_at_once_when_the_disk_runs_short(settings, tmp_path):
    settings.TRAINYARD = {**settings.TRAINYARD, "WORKSPACE_TRASH_DELAY": 3600}
    with trash.job_running():
        for i in range(2):
            trash.discard(a_checkout(tmp_path / "workspaces" / "jobs" / str(i)))
        assert trash.empty() == (0, None) and len(entries()) == 2
        free = shutil.disk_usage(tmp_path).free
        settings.TRAINYARD = {**settings.TRAINYARD, "WORKSPACE_TRASH_MIN_FREE_BYTES": free * 2}
        assert trash.empty()[0] == 2 and entries() == []
