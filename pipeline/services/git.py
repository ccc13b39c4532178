"""Git through its CLI with argument lists: one cached mirror per repository and host, a
clean checkout per build or job. Branch names are validated before they reach git at all.

Time. Every call has a deadline that fits its caller: a web request (resolve_branch:
GIT_REQUEST_TIMEOUT), the sync beat (GIT_SYNC_TIMEOUT) or a worker (everything else:
GIT_TIMEOUT). The deadline covers the wait for the mirror's lock as well as git itself; a
git that outlives it is stopped with its children (its whole process group), and git's
low-speed limit ends a transfer that stalls before that. The lock is a flock on
`<mirror>.lock`, held by whoever fetches or clones; a caller that cannot get it in time
gets MirrorBusy ("another fetch of <repo> is running; try again"), and the sync does not
wait for it at all.

Hosts. Mirrors live under WORKSPACE_DIR, which belongs to one host. Nothing assumes that
another host fetched: ensure_commit() clones or fetches this host's mirror when it lacks a
SHA, and read_file, commit_info and checkout call it first.

Trust. A check sees the mirror's objects folder (objects_path(), bound read-only by the
sandbox) and nothing else of it. Fetches still assume the rest could have been tampered
with: the URL comes from the database, the mirror's config is cut back to the settings
`clone --mirror` writes, hooks are off, and only known transports may run. A checkout
shares nothing with its mirror but that objects folder (its alternates file). Messages
never show the credentials of a clone URL.
"""

import fcntl
import logging
import os
import re
import shutil
import signal
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

from django.conf import settings

logger = logging.getLogger(__name__)

SHA = re.compile(r"^[0-9a-f]{40}$")
# git check-ref-format's rules, plus: no leading '-' (it would read as an option).
_BAD_REF = re.compile(r"(^[-./])|(\.\.)|(@\{)|([\x00-\x20\x7f~^:?*\[\\])|(//)|(/\.)|(\.lock(/|$))|([./]$)")
MAX_REF_LENGTH = 200
# Up to the last `@` before the path: a password may hold a raw `@` itself.
_CREDENTIALS = re.compile(r"//[^/\s]*@")
# What `clone --mirror` writes; anything else in a mirror's config was put there later.
_MIRROR_SETTINGS = re.compile(
    r"core\.(repositoryformatversion|filemode|bare|ignorecase|precomposeunicode|symlinks"
    r"|logallrefupdates)|extensions\.objectformat|remote\.origin\.(url|fetch|mirror)"
)
_TRANSPORTS = ("file", "git", "http", "https", "ssh")
STOP_GRACE = 5  # seconds between SIGTERM (git removes its lock files) and SIGKILL


class GitError(Exception):
    pass


class MirrorBusy(GitError):
    """Another fetch holds the mirror's lock: try again later."""


class InvalidRef(ValueError):
    pass


def validate_branch(name):
    """Return `name` if it is a safe, valid branch name; raise InvalidRef otherwise."""
    if not isinstance(name, str) or not name:
        raise InvalidRef("a branch name is needed")
    if len(name) > MAX_REF_LENGTH:
        raise InvalidRef(f"branch names are at most {MAX_REF_LENGTH} characters")
    if name == "@" or _BAD_REF.search(name):
        raise InvalidRef(f"{name!r} is not a valid branch name")
    return name


def validate_sha(sha):
    if not isinstance(sha, str) or not SHA.match(sha):
        raise InvalidRef(f"{sha!r} is not a full hexadecimal commit SHA")
    return sha


def redact(text):
    """`text` with the credentials of every URL in it hidden: //user:token@ -> //***@."""
    return _CREDENTIALS.sub("//***@", text)


def _git_env():
    # No prompts, no user or system config: the same behaviour on every machine.
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(settings.TRAINYARD["WORKSPACE_DIR"]),
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "LANG": "C.UTF-8",
    }


def _network_options(timeout):
    """`-c` options for a clone or fetch: its time limits, and nothing the mirror's own
    config or hooks could make it run."""
    seconds = max(1, int(timeout))
    pairs = [
        "protocol.allow=never", *(f"protocol.{name}.allow=always" for name in _TRANSPORTS),
        "core.hooksPath=/dev/null", "credential.helper=",
        "http.lowSpeedLimit=1000", f"http.lowSpeedTime={seconds}",
        f"core.sshCommand=ssh -o BatchMode=yes -o ConnectTimeout={seconds}",
    ]
    return [arg for pair in pairs for arg in ("-c", pair)]


def run_git(args, *, cwd=None, timeout=None, check=True, options=()):
    """Run git; after `timeout` seconds (GIT_TIMEOUT by default) stop it and everything it
    started, and raise GitError. `options` go before the command (`-c name=value`)."""
    timeout = timeout or settings.TRAINYARD["GIT_TIMEOUT"]
    argv = ["git", "-c", "protocol.ext.allow=never", *options, *args]
    proc = subprocess.Popen(argv, cwd=cwd, env=_git_env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop(proc)
        raise GitError(f"git {args[0]} timed out after {timeout:.0f} s") from None
    except BaseException:
        _stop(proc)
        raise
    if check and proc.returncode != 0:
        message = stderr.decode("utf-8", "replace").strip() or proc.returncode
        raise GitError(redact(f"git {args[0]} failed: {message}"))
    return subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)


def _stop(proc):
    """Stop git and its helpers (remote-http, ssh, upload-pack): the process group."""
    for sig, wait in ((signal.SIGTERM, STOP_GRACE), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.communicate(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def mirror_path(repository):
    return Path(settings.TRAINYARD["WORKSPACE_DIR"]) / "mirrors" / f"{repository.name}.git"


def objects_path(repository):
    """The only part of the mirror a check may see (read-only, at this same path): the
    object store its checkout's alternates file points into."""
    return mirror_path(repository).absolute() / "objects"


@contextmanager
def lock_file(path, *, wait):
    """An exclusive flock on `path` for the block, across threads and processes.

    Waits up to `wait` seconds for it (0: not at all). Yields True once held, or False,
    holding nothing, when another holder still has it then.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        if not _acquire(handle, time.monotonic() + wait):
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _acquire(handle, deadline):
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)


def update_mirror(repository, *, timeout=None, wait=True):
    """Clone this host's mirror of the repository, or fetch it if there is one; its path.

    The whole call, the wait for the mirror's lock included, takes at most `timeout`
    seconds (GIT_TIMEOUT by default). With wait=False a busy mirror raises MirrorBusy at
    once. A clone that fails leaves no mirror behind, so the next call starts afresh.
    """
    return _refresh(repository, timeout or settings.TRAINYARD["GIT_TIMEOUT"], wait=wait)


def _refresh(repository, timeout, *, wait, unless_has=None):
    deadline = time.monotonic() + timeout
    path = mirror_path(repository)
    with lock_file(f"{path}.lock", wait=timeout if wait else 0) as held:
        if not held:
            raise MirrorBusy(f"another fetch of {repository.name} is running; try again")
        if unless_has and _has_commit(path, unless_has):
            return path  # whoever held the lock just fetched it
        if (path / "HEAD").exists():
            _fetch(repository, path, deadline)
        else:
            _clone(repository, path, deadline)
    return path


def _left(deadline, what):
    left = deadline - time.monotonic()
    if left <= 0:
        raise GitError(f"git {what} timed out: the time was spent waiting for the mirror")
    return left


def _fetch(repository, path, deadline):
    _scrub_config(repository, path)
    left = _left(deadline, "fetch")
    # The URL of today, not the mirror's remote: its config is not trusted for commands.
    run_git(["fetch", "--prune", "--quiet", "--upload-pack=git-upload-pack", "--",
             repository.clone_url, "+refs/*:refs/*"],
            cwd=path, timeout=left, options=_network_options(left))


def _clone(repository, path, deadline):
    # Made next to its place and moved there whole: a reader never sees half a mirror.
    partial = path.with_name(f"{path.name}.partial")
    for leftover in (partial, path):  # a clone killed before this code cleaned up after it
        shutil.rmtree(leftover, ignore_errors=True)
    left = _left(deadline, "clone")
    try:
        run_git(["clone", "--mirror", "--quiet", "--upload-pack=git-upload-pack", "--",
                 repository.clone_url, str(partial)],
                timeout=left, options=_network_options(left))
    except GitError:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    os.replace(partial, path)


def _scrub_config(repository, path):
    """Cut the mirror's config back to what `clone --mirror` wrote (reading a config file
    with --file runs nothing and follows no include)."""
    config = str(path / "config")
    listed = run_git(["config", "--file", config, "--no-includes", "--null", "--list"], cwd=path)
    names = {entry.split(b"\n", 1)[0].decode("utf-8", "replace")
             for entry in listed.stdout.split(b"\0") if entry}
    unexpected = sorted(name for name in names if not _MIRROR_SETTINGS.fullmatch(name))
    for name in unexpected:
        run_git(["config", "--file", config, "--unset-all", name], cwd=path)
    if unexpected:
        logger.warning("removed settings nobody should have put in the mirror of %s: %s",
                       repository.name, ", ".join(unexpected))


def _has_commit(path, sha, timeout=None):
    if not (path / "HEAD").exists():
        return False
    return run_git(["cat-file", "-e", f"{sha}^{{commit}}"], cwd=path, timeout=timeout,
                   check=False).returncode == 0


def ensure_commit(repository, sha, *, timeout=None):
    """This host's mirror path, once commit `sha` is in it.

    When the SHA is there already this is one git process and no fetch. Otherwise the
    mirror is cloned or fetched (within `timeout`, GIT_TIMEOUT by default; MirrorBusy if
    another fetch holds it all that time), and GitError names the SHA if it is still not
    there: the branch that had it was force-pushed or deleted.
    """
    validate_sha(sha)
    path = mirror_path(repository)
    if _has_commit(path, sha, timeout):
        return path
    _refresh(repository, timeout or settings.TRAINYARD["GIT_TIMEOUT"], wait=True,
             unless_has=sha)
    if not _has_commit(path, sha, timeout):
        raise GitError(f"commit {sha} is not in {repository.name}, even after a fetch: "
                       "was it force-pushed away?")
    return path


def resolve_branch(repository, branch, *, timeout=None):
    """The head SHA of `branch`, fetched fresh. Raises InvalidRef if there is no such branch.

    Meant for web requests: it takes at most `timeout` seconds (GIT_REQUEST_TIMEOUT by
    default), the wait for a busy mirror included, then raises GitError (MirrorBusy).
    """
    validate_branch(branch)
    update_mirror(repository, timeout=timeout or settings.TRAINYARD["GIT_REQUEST_TIMEOUT"])
    return resolve_branch_cached(repository, branch)


def read_file(repository, sha, relpath, *, timeout=None):
    """The bytes of `relpath` at `sha`, or None when the file is not there. Fetches this
    host's mirror first if it lacks `sha` (see ensure_commit)."""
    argv = ["cat-file", "blob", f"{validate_sha(sha)}:{relpath}"]
    proc = _in_mirror(repository, sha, lambda path: run_git(argv, cwd=path, check=False),
                      timeout=timeout)
    return proc.stdout if proc.returncode == 0 else None


def commit_info(repository, sha, *, timeout=None):
    """Author, date and message of `sha` (fetched first if this host lacks it)."""
    argv = ["log", "-1", "--format=%an%x00%ae%x00%cI%x00%B", validate_sha(sha), "--"]
    proc = _in_mirror(repository, sha, lambda path: run_git(argv, cwd=path, check=False),
                      timeout=timeout)
    if proc.returncode != 0:
        raise GitError(f"git log failed: {proc.stderr.decode('utf-8', 'replace').strip()}")
    name, email, date, message = proc.stdout.decode("utf-8", "replace").split("\x00", 3)
    return {"author_name": name, "author_email": email, "committed_at": date,
            "message": message.strip()}


def _in_mirror(repository, sha, read, *, timeout=None):
    """`read(mirror path)`'s CompletedProcess, read first from the mirror as it is: the SHA
    is nearly always there already, and asking git whether it is would be one more process
    every time. Only a failed read asks, and if the SHA is missing, fetches it (see
    ensure_commit) and reads again; if it was there, the failure is the answer."""
    path = mirror_path(repository)
    if (path / "HEAD").exists():
        proc = read(path)
        if proc.returncode == 0 or _has_commit(path, sha, timeout):
            return proc
    return read(ensure_commit(repository, sha, timeout=timeout))


# What `git init` writes for a checkout (no template: no hooks, no sample files), but no
# reflog: nobody goes back in a job's throwaway checkout.
_CHECKOUT_CONFIG = ("[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = false\n"
                    "\tlogallrefupdates = false\n")


def checkout(repository, sha, dest, *, timeout=None):
    """A clean working tree of `sha` at `dest`, which must not exist yet or be empty.

    Fetches this host's mirror first if it lacks `sha`. The checkout is an empty
    repository whose alternates file points into objects_path() and nothing else: no
    config, no refs and no upload-pack run of the mirror's (which `clone --shared` would
    bring), and no copy of its objects. HEAD is detached at `sha`; there are no branches.
    One git process: the empty repository is written here, not by `git init` (which
    cost as much CPU as the checkout itself), and the mirror is asked for `sha` only
    when the checkout fails.
    """
    validate_sha(sha)
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise GitError(f"cannot check out into {dest}: it is not empty")
    dot_git = dest / ".git"
    dest.mkdir(parents=True, exist_ok=True)
    # What git needs to see a repository (HEAD, objects/, refs/), and nothing more: every
    # folder and file made here is made again and removed for each job.
    for folder in (dot_git, dot_git / "objects", dot_git / "objects" / "info", dot_git / "refs"):
        folder.mkdir()
    (dot_git / "HEAD").write_text("ref: refs/heads/master\n")  # unborn, as after `git init`
    (dot_git / "config").write_text(_CHECKOUT_CONFIG)
    (dot_git / "objects" / "info" / "alternates").write_text(f"{objects_path(repository)}\n")
    argv = ["checkout", "--quiet", "--detach", sha]
    options = ["-c", "advice.detachedHead=false"]
    proc = _in_mirror(repository, sha, lambda _: run_git(argv, cwd=dest, options=options, check=False),
                      timeout=timeout)
    if proc.returncode != 0:
        message = proc.stderr.decode("utf-8", "replace").strip() or proc.returncode
        raise GitError(redact(f"git checkout failed: {message}"))
    return dest


def known_branches(repository, limit=200):
    """Branch names in the mirror as last fetched (no fetch: pages must stay fast)."""
    path = mirror_path(repository)
    if not (path / "HEAD").exists():
        return []
    proc = run_git(["for-each-ref", "--sort=-committerdate", f"--count={limit}",
                    "--format=%(refname:lstrip=2)", "refs/heads/"], cwd=path, check=False)
    return proc.stdout.decode("utf-8", "replace").split() if proc.returncode == 0 else []


def resolve_branch_cached(repository, branch):
    """Like resolve_branch, without fetching (the caller just did)."""
    validate_branch(branch)
    proc = run_git(["rev-parse", "--verify", "--quiet", "--end-of-options",
                    f"refs/heads/{branch}^{{commit}}"], cwd=mirror_path(repository), check=False)
    if proc.returncode != 0:
        raise InvalidRef(f"branch {branch!r} does not exist in {repository.name}")
    return proc.stdout.decode().strip()


def remote_branches(url, *, timeout=None):
    """The branch names at `url`, read with `git ls-remote` (nothing is cloned or kept).

    For registering a repository: proves git can read the URL within `timeout` seconds
    (GIT_REQUEST_TIMEOUT by default). Raises GitError with git's own reason, credentials
    hidden.
    """
    timeout = timeout or settings.TRAINYARD["GIT_REQUEST_TIMEOUT"]
    # cwd "/": outside any repository, whose config (insteadOf, hooks) could change the URL.
    proc = run_git(["ls-remote", "--heads", "--upload-pack=git-upload-pack", "--", url],
                   cwd="/", timeout=timeout, options=_network_options(timeout))
    lines = proc.stdout.decode("utf-8", "replace").splitlines()
    return [line.split("\trefs/heads/", 1)[1] for line in lines if "\trefs/heads/" in line]


# Merging into a local provider's repository ----------------------------------------------
#
# The merge is made on the origin itself with plumbing, never in the fetch mirror: the
# merged tree by `merge-tree --write-tree` (git 2.38+), the commit by `commit-tree`, and
# the branch moved by `update-ref NEW OLD`, which moves it only if it is still at OLD, so
# a push that lands in between is never overwritten. No working tree is touched.

_ORIGIN_OPTIONS = ("-c", "core.hooksPath=/dev/null")


class MergeConflict(GitError):
    def __init__(self, files):
        self.files = files
        super().__init__(f"it does not merge cleanly: conflicts in {', '.join(files) or '?'}")


def local_origin(repository):
    """The path of a local provider's repository (its clone URL), checked to be one."""
    path = Path(repository.clone_url)
    if not path.is_absolute() or not path.is_dir():
        raise GitError(f"{repository.name}'s clone URL is not a local repository path")
    return path


def origin_branch_head(origin, branch):
    """The SHA `branch` points at in the repository at `origin`, or None."""
    validate_branch(branch)
    proc = run_git(["rev-parse", "--verify", "--quiet", "--end-of-options",
                    f"refs/heads/{branch}^{{commit}}"], cwd=origin, check=False)
    return proc.stdout.decode().strip() if proc.returncode == 0 else None


def is_ancestor(origin, ancestor, descendant):
    validate_sha(ancestor)
    validate_sha(descendant)
    return run_git(["merge-base", "--is-ancestor", ancestor, descendant], cwd=origin,
                   check=False).returncode == 0


def merge_commit(origin, base, head, message, *, name, email):
    """A merge commit of `head` into `base`, written to `origin`'s objects (no ref moves).
    Raises MergeConflict naming the files when the two do not merge cleanly."""
    validate_sha(base)
    validate_sha(head)
    proc = run_git(["merge-tree", "--write-tree", "--name-only", "--no-messages", base, head],
                   cwd=origin, check=False, options=_ORIGIN_OPTIONS)
    lines = proc.stdout.decode("utf-8", "replace").splitlines()
    if proc.returncode == 1:
        raise MergeConflict(sorted({line for line in lines[1:] if line}))
    if proc.returncode != 0 or not lines or not SHA.match(lines[0]):
        raise GitError(f"git merge-tree failed: {proc.stderr.decode('utf-8', 'replace').strip()}")
    identity = ["-c", f"user.name={name}", "-c", f"user.email={email}"]
    proc = run_git(["commit-tree", lines[0], "-p", base, "-p", head, "-m", message],
                   cwd=origin, options=[*_ORIGIN_OPTIONS, *identity])
    return proc.stdout.decode().strip()


def update_branch(origin, branch, new, old, *, reason):
    """Move `branch` in `origin` from `old` to `new`. False when it is no longer at `old`
    (someone pushed meanwhile): nothing was changed then."""
    validate_branch(branch)
    validate_sha(new)
    validate_sha(old)
    proc = run_git(["update-ref", "-m", reason, f"refs/heads/{branch}", new, old], cwd=origin,
                   check=False, options=_ORIGIN_OPTIONS)
    return proc.returncode == 0


def commit_log(repository, head, *, base=None, limit=500):
    """The commits reachable from `head` and not from `base`, oldest first, at most
    `limit` (the newest ones). Each: sha, parents, author_name, author_email,
    committed_at (ISO), message. Reads this host's mirror (fetched if it lacks `head`)."""
    validate_sha(head)
    path = ensure_commit(repository, head)
    revs = [head] + ([f"^{validate_sha(base)}"] if base else [])
    proc = run_git(["log", f"--max-count={int(limit)}", "--format=%H%x00%P%x00%an%x00%ae%x00%cI"
                    "%x00%B%x1e", *revs, "--"], cwd=path)
    commits = []
    for record in proc.stdout.decode("utf-8", "replace").split("\x1e"):
        record = record.strip("\n")
        if not record:
            continue
        sha, parents, name, email, date, message = record.split("\x00", 5)
        commits.append({"sha": sha, "parents": parents.split(), "author_name": name,
                        "author_email": email, "committed_at": date, "message": message.strip()})
    commits.reverse()
    return commits


def mirror_is_ancestor(repository, ancestor, descendant):
    """Whether `ancestor` is reachable from `descendant`, in this host's mirror."""
    validate_sha(ancestor)
    path = ensure_commit(repository, validate_sha(descendant))
    return run_git(["merge-base", "--is-ancestor", ancestor, descendant], cwd=path,
                   check=False).returncode == 0
