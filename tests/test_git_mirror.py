"""Git mirrors against real git: remotes that stall, worker hosts that never fetched,
a mirror a check tampered with. Real sockets and repositories, no sleeps."""

import socket
import subprocess
import threading
import time

import pytest
from django.db import connections

from pipeline.services import git, pulls
from tests.factories import RepositoryFactory
from tests.helpers import FAST_SPEC, GIT_ENV, free_port, wait_until

# A stall outlives every timeout below: the 90 s backstop only bounds a broken build.
pytestmark = pytest.mark.timeout(90)

# A git that runs out of time gets SIGTERM, and SIGKILL 5 s later if it is still there.
KILL_GRACE = 5


class StalledRemote:
    """A clone URL whose server accepts TCP connections and never answers a byte."""

    def __init__(self):
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}/x.git"
        self.connections = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self):
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections.append(conn)

    def close(self):
        """Hang up: every git still waiting on this remote gets an end of file."""
        self._stop.set()
        self._thread.join(5)
        self._listener.close()
        for conn in self.connections:
            conn.close()


class Background:
    """`func` in a thread of its own, as another worker or beat tick would run it."""

    def __init__(self, func, *args, **kwargs):
        self.outcome = {}

        def target():
            try:
                self.outcome["value"] = func(*args, **kwargs)
            except BaseException as exc:  # handed to the test by join()
                self.outcome["error"] = exc
            finally:
                connections.close_all()

        self.thread = threading.Thread(target=target, daemon=True)
        self.thread.start()

    def join(self, timeout=30):
        """What `func` returned, or the exception it raised."""
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"still running after {timeout} s"
        return self.outcome.get("value", self.outcome.get("error"))


@pytest.fixture
def stalled_remote():
    remote = StalledRemote()
    yield remote
    remote.close()


def configure(settings, **values):
    # conftest's autouse fixture replaced TRAINYARD: change it the same way.
    settings.TRAINYARD = {**settings.TRAINYARD, **values}


def run(*args, cwd=None):
    return subprocess.run(args, cwd=cwd, env=GIT_ENV, capture_output=True, text=True,
                          check=True).stdout.strip()


def timed(func, *args, **kwargs):
    started = time.monotonic()
    try:
        return func(*args, **kwargs), time.monotonic() - started
    except git.GitError as exc:
        return exc, time.monotonic() - started


# Finding 1: a stalled remote must not freeze anything ---------------------------------

@pytest.mark.django_db
def test_it_syncs_the_healthy_repositories_while_remotes_stall(settings, repository, git_repo,
                                                               stalled_remote):
    configure(settings, GIT_SYNC_TIMEOUT=2)
    git_repo.commit({"a": "1"}, branch="feature/a")
    pr, _ = pulls.open_pull_request(repository, "feature/a")
    moved = git_repo.commit({"a": "2"}, branch="feature/a")
    never_cloned = RepositoryFactory(name="never-cloned", clone_url=stalled_remote.url)
    went_dark = RepositoryFactory(name="went-dark", clone_url=str(git_repo.path))
    git.update_mirror(went_dark)
    went_dark.clone_url = stalled_remote.url  # the mirror fetches from the URL of today
    went_dark.save()

    outcome, elapsed = timed(pulls.sync_local_repositories)

    assert len(stalled_remote.connections) >= 2, "both fetches should have reached the stall"
    assert elapsed < 2 + KILL_GRACE
    assert outcome == {"synced": ["app"], "skipped": [], "failed": ["never-cloned", "went-dark"]}
    pr.refresh_from_db()
    assert pr.head_sha == moved
    # A clone that ran out of time leaves nothing half-made behind: the next one works.
    assert not git.mirror_path(never_cloned).exists()
    never_cloned.clone_url = str(git_repo.path)
    never_cloned.save()
    assert "never-cloned" in pulls.sync_local_repositories()["synced"]


@pytest.mark.django_db
def test_it_skips_a_repository_whose_mirror_another_fetch_holds(settings, repository, git_repo,
                                                                stalled_remote):
    configure(settings, GIT_SYNC_TIMEOUT=30, GIT_REQUEST_TIMEOUT=1)
    git_repo.commit({"a": "1"}, branch="feature/a")
    pr, _ = pulls.open_pull_request(repository, "feature/a")
    moved = git_repo.commit({"a": "2"}, branch="feature/a")
    stalled = RepositoryFactory(name="stalled", clone_url=stalled_remote.url)
    worker = Background(git.update_mirror, stalled, timeout=60)  # a worker's fetch, stuck
    wait_until(lambda: stalled_remote.connections, timeout=10, message="the worker's fetch")

    outcome, elapsed = timed(pulls.sync_local_repositories)

    assert elapsed < 2, "the sync must not wait for a busy mirror (its timeout is 30 s)"
    assert outcome == {"synced": ["app"], "skipped": ["stalled"], "failed": []}
    pr.refresh_from_db()
    assert pr.head_sha == moved

    # A web request waits for the busy mirror no longer than its own timeout.
    error, elapsed = timed(git.resolve_branch, stalled, "master")
    assert isinstance(error, git.MirrorBusy)
    assert str(error) == "another fetch of stalled is running; try again"
    assert elapsed < 1 + 1

    stalled_remote.close()
    assert isinstance(worker.join(), git.GitError)


@pytest.mark.django_db(transaction=True)
def test_it_never_runs_two_syncs_at_once(settings, stalled_remote):
    configure(settings, GIT_SYNC_TIMEOUT=30)
    RepositoryFactory(name="stalled", clone_url=stalled_remote.url)
    first = Background(pulls.sync_local_repositories)
    wait_until(lambda: stalled_remote.connections, timeout=10, message="the first sync's fetch")

    second, elapsed = timed(pulls.sync_local_repositories)

    assert second is None
    assert elapsed < 1
    stalled_remote.close()
    assert first.join() == {"synced": [], "skipped": [], "failed": ["stalled"]}


@pytest.mark.django_db
def test_it_gives_up_on_a_stalled_remote_within_the_request_timeout(settings, git_repo,
                                                                    stalled_remote):
    configure(settings, GIT_REQUEST_TIMEOUT=2)
    stalled = RepositoryFactory(name="stalled", clone_url=stalled_remote.url)

    error, elapsed = timed(git.resolve_branch, stalled, "master")

    assert isinstance(error, git.GitError)
    # git's own low-speed limit or, failing that, the process's timeout
    assert "too slow" in str(error) or "timed out after 2 s" in str(error)
    assert elapsed < 2 + KILL_GRACE
    assert not git.mirror_path(stalled).exists()
    stalled.clone_url = str(git_repo.path)
    stalled.save()
    assert git.resolve_branch(stalled, "master") == git_repo.head()


@pytest.mark.django_db
def test_it_keeps_credentials_out_of_git_errors(settings, stalled_remote):
    configure(settings, GIT_REQUEST_TIMEOUT=1)
    refused = f"https://ci-bot:s3cret-token@127.0.0.1:{free_port()}/x.git"
    stalled = stalled_remote.url.replace("//", "//ci-bot:s3cret-token@")
    for name, url in [("refused", refused), ("stalled", stalled)]:
        repository = RepositoryFactory(name=name, clone_url=url)
        with pytest.raises(git.GitError) as info:
            git.resolve_branch(repository, "master")
        assert "s3cret-token" not in str(info.value)

    assert (git.redact("fatal: unable to access 'https://ci-bot:s3cret@example.com/x.git/'")
            == "fatal: unable to access 'https://***@example.com/x.git/'")
    assert git.redact("https://ghp_token@github.com/o/r.git") == "https://***@github.com/o/r.git"
    assert git.redact("https://u:p@ss@host/o/r.git") == "https://***@host/o/r.git"
    assert git.redact("/srv/git/o/r.git and https://example.com/a@b") == (
        "/srv/git/o/r.git and https://example.com/a@b")


# Finding 2: any worker host can build any SHA ----------------------------------------

@pytest.mark.django_db
def test_it_gets_a_commit_onto_a_host_that_never_fetched_it(settings, repository, git_repo,
                                                            tmp_path):
    def on_host(name):
        configure(settings, WORKSPACE_DIR=tmp_path / name / "workspaces")

    on_host("web")
    sha = git.resolve_branch(repository, "master")
    on_host("worker-b")
    assert not git.mirror_path(repository).exists()
    assert git.read_file(repository, sha, "trainyard.yml") == FAST_SPEC.encode()
    assert git.ensure_commit(repository, sha) == git.mirror_path(repository)
    assert git.commit_info(repository, sha)["message"] == "Initial commit"
    dest = git.checkout(repository, sha, tmp_path / "worker-b-build-1")
    assert (dest / "README").read_text() == "hello\n"

    newer = git_repo.commit({"trainyard.yml": FAST_SPEC + "# v2\n"}, message="v2")
    on_host("web")
    assert git.resolve_branch(repository, "master") == newer
    on_host("worker-b")  # its mirror is there, but older than the push
    assert git.read_file(repository, newer, "trainyard.yml").endswith(b"# v2\n")
    dest = git.checkout(repository, newer, tmp_path / "worker-b-build-2")
    assert run("git", "rev-parse", "HEAD", cwd=dest) == newer
    on_host("worker-c")  # a checkout first, nothing else before it
    dest = git.checkout(repository, newer, tmp_path / "worker-c-build-2")
    assert (dest / "trainyard.yml").read_text().endswith("# v2\n")


@pytest.mark.django_db
def test_it_finds_a_present_commit_with_one_git_process_and_no_fetch(repository, git_repo,
                                                                      monkeypatch):
    sha = git.resolve_branch(repository, "master")
    repository.clone_url = "/nonexistent"  # any fetch would fail now
    calls = []
    real = git.run_git
    monkeypatch.setattr(git, "run_git", lambda args, **kw: calls.append(args) or real(args, **kw))

    assert git.ensure_commit(repository, sha) == git.mirror_path(repository)
    assert [args[0] for args in calls] == ["cat-file"]


@pytest.mark.django_db
def test_it_reads_and_checks_out_a_present_commit_with_one_git_process_each(
        repository, git_repo, monkeypatch, tmp_path):
    sha = git.resolve_branch(repository, "master")
    repository.clone_url = "/nonexistent"  # any fetch would fail now
    calls = []
    real = git.run_git
    monkeypatch.setattr(git, "run_git", lambda args, **kw: calls.append(args) or real(args, **kw))

    assert git.read_file(repository, sha, "trainyard.yml") == FAST_SPEC.encode()
    assert git.commit_info(repository, sha)["message"] == "Initial commit"
    dest = git.checkout(repository, sha, tmp_path / "checkout")
    assert [args[0] for args in calls] == ["cat-file", "log", "checkout"]
    assert run("git", "rev-parse", "HEAD", cwd=dest) == sha
    assert run("git", "status", "--porcelain", cwd=dest) == ""

    calls.clear()
    assert git.read_file(repository, sha, "no-such-file") is None  # asked: the commit is there
    assert [args[0] for args in calls] == ["cat-file", "cat-file"]


@pytest.mark.django_db
def test_it_names_the_commit_a_fetch_could_not_bring(repository, git_repo):
    gone = "0123456789abcdef0123456789abcdef01234567"
    with pytest.raises(git.GitError, match=f"commit {gone} is not in app"):
        git.ensure_commit(repository, gone)


# Finding 3: the mirror runs nothing a check put there --------------------------------

@pytest.mark.django_db
def test_it_runs_nothing_a_tampered_mirror_asks_for(repository, git_repo, tmp_path):
    git.update_mirror(repository)
    mirror = git.mirror_path(repository)
    ran = tmp_path / "ran"
    run("git", "config", "--file", str(mirror / "config"), "remote.origin.uploadpack",
        f"touch {ran}-uploadpack; git-upload-pack")
    run("git", "config", "--file", str(mirror / "config"), "core.sshCommand", f"touch {ran}-ssh")
    hook = mirror / "hooks" / "reference-transaction"
    hook.parent.mkdir(exist_ok=True)
    hook.write_text(f"#!/bin/sh\ntouch {ran}-hook\n")
    hook.chmod(0o755)
    newer = git_repo.commit({"b": "1"}, message="moves master: the hook would run")

    assert git.resolve_branch(repository, "master") == newer

    assert sorted(p.name for p in tmp_path.glob("ran*")) == []
    settings_left = run("git", "config", "--file", str(mirror / "config"), "--list")
    assert "uploadpack" not in settings_left
    assert "sshcommand" not in settings_left


@pytest.mark.django_db
def test_it_makes_a_checkout_that_shares_only_the_mirror_objects(repository, git_repo, tmp_path):
    sha = git.resolve_branch(repository, "master")
    mirror = git.mirror_path(repository)

    dest = git.checkout(repository, sha, tmp_path / "checkout")

    objects = git.objects_path(repository)
    assert objects == mirror.absolute() / "objects"
    assert (dest / ".git" / "objects" / "info" / "alternates").read_text() == f"{objects}\n"
    assert str(mirror) not in (dest / ".git" / "config").read_text()
    assert run("git", "for-each-ref", cwd=dest) == ""  # not even the mirror's refs
    # What a sandboxed check sees of the mirror: its objects folder, nothing else.
    mirror.rename(tmp_path / "hidden")
    mirror.mkdir()
    (tmp_path / "hidden" / "objects").rename(objects)
    assert run("git", "rev-parse", "HEAD", cwd=dest) == sha
    assert run("git", "status", "--porcelain", cwd=dest) == ""
    assert run("git", "log", "-1", "--format=%s", cwd=dest) == "Initial commit"
    assert run("git", "show", "HEAD:README", cwd=dest) == "hello"
