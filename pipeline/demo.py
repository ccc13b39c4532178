"""Turn examples/demo-app into a real git repository Trainyard can watch and build.

Only the standard library is imported, so this loads without Django settings.
"""

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

DEMO_APP_DIR = Path(__file__).resolve().parent.parent / "examples" / "demo-app"
DEMO_BRANCHES = ("master", "feature/hello", "feature/broken")

DANA = ("Dana Demo", "dana@example.com")
ARI = ("Ari Author", "ari@example.com")
BO = ("Bo Breaker", "bo@example.com")

# Build output and runtime state from local runs must not end up in the repository.
EXCLUDED = ("__pycache__", "*.pyc", ".pytest_cache", ".ruff_cache", "reports", "run", "REVISION")
# Passed to every git call: the result must not depend on anyone's git config.
GIT_OPTIONS = ("-c", "init.defaultBranch=master", "-c", "commit.gpgsign=false",
               "-c", "core.autocrlf=false")

FAREWELL_CODE = '''

def farewell(name: str | None = None) -> str:
    """The counterpart of greet(), for people on their way out."""
    return f"Goodbye, {normalize_name(name)}!"
'''
FAREWELL_TEST = '''from demo_app.greeting import farewell


def test_farewell_uses_the_name():
    assert farewell("Ada") == "Goodbye, Ada!"


def test_farewell_defaults_to_the_world():
    assert farewell() == "Goodbye, world!"
'''


def _git_env(author):
    # Drop inherited GIT_* (e.g. GIT_DIR from a hook) and ignore global/system config.
    env = {key: value for key, value in os.environ.items() if not key.startswith("GIT_")}
    name, email = author
    env.update(GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL=os.devnull, GIT_TERMINAL_PROMPT="0",
               GIT_AUTHOR_NAME=name, GIT_AUTHOR_EMAIL=email,
               GIT_COMMITTER_NAME=name, GIT_COMMITTER_EMAIL=email)
    return env


def _git(repo, *args, author=DANA):
    name, email = author
    command = ["git", *GIT_OPTIONS, "-c", f"user.name={name}", "-c", f"user.email={email}", *args]
    result = subprocess.run(command, cwd=repo, env=_git_env(author), check=True,
                            capture_output=True, text=True)
    return result.stdout


def _branches(path):
    """Local branch names of the repository at `path`, or None if it is not one."""
    if not (path / ".git").is_dir():
        return None  # Never ask git from inside `path`: it would find an enclosing repo.
    out = _git(path, "--git-dir", str(path / ".git"), "for-each-ref",
               "--format=%(refname:short)", "refs/heads/")
    return set(out.split())


def _is_complete(path):
    branches = _branches(path)
    return branches is not None and set(DEMO_BRANCHES) <= branches


def _commit(repo, message, author):
    _git(repo, "add", "--all", author=author)
    _git(repo, "commit", "--quiet", "-m", message, author=author)


def _commit_master(repo):
    # Two commits so the history looks like a project's: the app, then its pipeline.
    shutil.copytree(DEMO_APP_DIR, repo, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns(*EXCLUDED, "trainyard.yml"))
    _commit(repo, "Add the demo app", DANA)
    shutil.copy2(DEMO_APP_DIR / "trainyard.yml", repo / "trainyard.yml")
    _commit(repo, "Build and deploy the demo app with Trainyard", DANA)


def _commit_feature_hello(repo):
    # A real change that keeps every check green.
    _git(repo, "checkout", "--quiet", "-b", "feature/hello", "master")
    greeting = repo / "demo_app" / "greeting.py"
    greeting.write_text(greeting.read_text() + FAREWELL_CODE)
    (repo / "tests" / "unit" / "test_farewell.py").write_text(FAREWELL_TEST)
    _commit(repo, "Say goodbye too", ARI)
    _git(repo, "checkout", "--quiet", "master")


def _commit_feature_broken(repo):
    # Still lints, but breaks the unit tests that pin the greeting.
    _git(repo, "checkout", "--quiet", "-b", "feature/broken", "master")
    greeting = repo / "demo_app" / "greeting.py"
    source = greeting.read_text()
    if 'f"Hello, ' not in source:
        raise RuntimeError(f"{greeting} no longer has the greeting this branch changes")
    greeting.write_text(source.replace('f"Hello, ', 'f"Howdy, '))
    _commit(repo, "Greet people the cowboy way", BO)
    _git(repo, "checkout", "--quiet", "master")


def _build(repo):
    _git(repo, "init", "--quiet")
    _commit_master(repo)
    _commit_feature_hello(repo)
    _commit_feature_broken(repo)
    if _git(repo, "status", "--porcelain"):
        raise RuntimeError(f"demo repository {repo} has uncommitted files")


def create_demo_repository(path: Path) -> Path:
    """Create the demo repository at `path` (a non-bare repo, HEAD on master).

    Idempotent: an existing repository with the demo branches is left as it is.
    """
    path = Path(path).absolute()
    if _is_complete(path):
        return path
    if path.exists() and any(path.iterdir()):
        raise FileExistsError(f"{path} exists and is not the demo repository")
    path.parent.mkdir(parents=True, exist_ok=True)
    # Build next to the target and rename: an interrupted build leaves no half repository.
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    staging.chmod(0o755)  # mkdtemp's 0700 would hide the repository from other users.
    try:
        _build(staging)
        staging.replace(path)
    except OSError:
        if not _is_complete(path):  # Not a concurrent caller that finished first.
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path
