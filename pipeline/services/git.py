"""Git through its CLI with argument lists: one cached mirror per repository, a clean
checkout per build. Branch names are validated before they reach git at all."""

import fcntl
import os
import re
import subprocess
from contextlib import contextmanager
from pathlib import Path

from django.conf import settings

SHA = re.compile(r"^[0-9a-f]{40}$")
# git check-ref-format's rules, plus: no leading '-' (it would read as an option).
_BAD_REF = re.compile(r"(^[-./])|(\.\.)|(@\{)|([\x00-\x20\x7f~^:?*\[\\])|(//)|(/\.)|(\.lock(/|$))|([./]$)")
MAX_REF_LENGTH = 200


class GitError(Exception):
    pass


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


def run_git(args, *, cwd=None, timeout=None, check=True):
    argv = ["git", "-c", "protocol.ext.allow=never", *args]
    try:
        proc = subprocess.run(
            argv,
            cwd=cwd,
            env=_git_env(),
            capture_output=True,
            timeout=timeout or settings.TRAINYARD["GIT_TIMEOUT"],
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise GitError(f"git {args[0]} timed out") from exc
    if check and proc.returncode != 0:
        stderr = proc.stderr.decode("utf-8", "replace").strip()
        raise GitError(f"git {args[0]} failed: {stderr or proc.returncode}")
    return proc


def mirror_path(repository):
    return Path(settings.TRAINYARD["WORKSPACE_DIR"]) / "mirrors" / f"{repository.name}.git"


@contextmanager
def _locked(path):
    """Serialise fetches into one mirror across threads and processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{path}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def update_mirror(repository):
    """Clone the repository's mirror once, fetch it afterwards. Returns its path."""
    path = mirror_path(repository)
    with _locked(path):
        if (path / "HEAD").exists():
            run_git(["fetch", "--prune", "--quiet", "origin"], cwd=path)
        else:
            run_git(["clone", "--mirror", "--quiet", "--", repository.clone_url, str(path)])
    return path


def resolve_branch(repository, branch):
    """The head SHA of `branch`, fetched fresh. Raises InvalidRef if there is no such branch."""
    validate_branch(branch)
    update_mirror(repository)
    return resolve_branch_cached(repository, branch)


def read_file(repository, sha, relpath):
    """The bytes of `relpath` at `sha`, or None when the file is not there."""
    validate_sha(sha)
    proc = run_git(["cat-file", "blob", f"{sha}:{relpath}"], cwd=mirror_path(repository),
                   check=False)
    return proc.stdout if proc.returncode == 0 else None


def commit_info(repository, sha):
    validate_sha(sha)
    proc = run_git(
        ["log", "-1", "--format=%an%x00%ae%x00%cI%x00%B", sha, "--"], cwd=mirror_path(repository)
    )
    name, email, date, message = proc.stdout.decode("utf-8", "replace").split("\x00", 3)
    return {"author_name": name, "author_email": email, "committed_at": date,
            "message": message.strip()}


def checkout(repository, sha, dest):
    """A clean working tree of `sha` at `dest` (shares objects with the mirror)."""
    validate_sha(sha)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    run_git(["clone", "--shared", "--no-checkout", "--quiet", "--", str(mirror_path(repository)),
             str(dest)])
    run_git(["checkout", "--quiet", "--detach", sha], cwd=dest)
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
