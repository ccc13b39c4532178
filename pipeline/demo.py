"""Turn examples/demo-app into a real git repository Trainyard can watch and build.

master holds the app; three feature branches start from it: feature/hello (Alice) and
feature/bye (Bob) are green and merge cleanly together (they change different files), so
both can ride one train; feature/broken (Bo) fails its unit tests.

Only the standard library is imported, so this loads without Django settings.
"""

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

DEMO_APP_DIR = Path(__file__).resolve().parent.parent / "examples" / "demo-app"
DEMO_BRANCHES = ("master", "feature/hello", "feature/broken", "feature/bye")
# What a demo repository made by an older Trainyard has; the branches added since then
# are added to it (see create_demo_repository).
FIRST_BRANCHES = ("master", "feature/hello", "feature/broken")

DANA = ("Dana Demo", "dana@example.com")
ALICE = ("Alice", "alice@example.com")
BOB = ("Bob", "bob@example.com")
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
# feature/bye: a /bye endpoint in server.py (feature/hello changes greeting.py).
BYE_IMPORT = ("from demo_app.greeting import greet\n",
              "from demo_app.greeting import greet, normalize_name\n")
BYE_HANDLER = '''def bye(config: Config, request: Request) -> Response:
    name = request.query.get("name", [""])[0]
    return json_response(200, {"farewell": f"Bye, {normalize_name(name)}!"})


'''
BYE_ROUTE = ('    "/hello": hello,\n', '    "/hello": hello,\n    "/bye": bye,\n')
BYE_TEST = '''import json

from demo_app.config import Config
from demo_app.server import handle_request


def test_bye_names_the_leaver(tmp_path):
    config = Config("127.0.0.1", 0, "unknown", tmp_path)
    response = handle_request(config, "GET", "/bye?name=Ada")
    assert (response.status, json.loads(response.body)) == (200, {"farewell": "Bye, Ada!"})


def test_bye_defaults_to_the_world(tmp_path):
    response = handle_request(Config("127.0.0.1", 0, "unknown", tmp_path), "GET", "/bye")
    assert json.loads(response.body) == {"farewell": "Bye, world!"}
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


def _is_older_demo(path):
    branches = _branches(path)
    return branches is not None and set(FIRST_BRANCHES) <= branches


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


def _replace(path, old, new):
    source = path.read_text()
    if old not in source:
        raise RuntimeError(f"{path} no longer has {old.strip()!r}, which a demo branch changes")
    path.write_text(source.replace(old, new, 1))


def _say_goodbye(checkout):
    # A real change that keeps every check green.
    greeting = checkout / "demo_app" / "greeting.py"
    greeting.write_text(greeting.read_text() + FAREWELL_CODE)
    (checkout / "tests" / "unit" / "test_farewell.py").write_text(FAREWELL_TEST)


def _break_the_greeting(checkout):
    # Still lints, but breaks the unit tests that pin the greeting.
    _replace(checkout / "demo_app" / "greeting.py", 'f"Hello, ', 'f"Howdy, ')


def _add_bye_endpoint(checkout):
    # Green too, and only in server.py and a new test: merges cleanly with feature/hello.
    server = checkout / "demo_app" / "server.py"
    _replace(server, *BYE_IMPORT)
    _replace(server, "\nROUTES: ", "\n" + BYE_HANDLER + "ROUTES: ")
    _replace(server, *BYE_ROUTE)
    (checkout / "tests" / "unit" / "test_bye.py").write_text(BYE_TEST)


# Feature branch -> (its one commit's message, author, the change it makes).
FEATURES = {
    "feature/hello": ("Say goodbye too", ALICE, _say_goodbye),
    "feature/broken": ("Greet people the cowboy way", BO, _break_the_greeting),
    "feature/bye": ("Answer /bye", BOB, _add_bye_endpoint),
}


def _add_feature(repo, branch, base):
    """Commit the feature's change on a new `branch` from `base`, in a worktree of its own:
    the repository's checkout (master, and anything a person left in it) is not touched."""
    message, author, change = FEATURES[branch]
    checkout = Path(tempfile.mkdtemp(prefix="demo-branch-")) / "checkout"
    try:
        _git(repo, "worktree", "add", "--quiet", "-b", branch, str(checkout), base)
        change(checkout)
        _commit(checkout, message, author)
        _git(repo, "worktree", "remove", str(checkout))
    finally:
        shutil.rmtree(checkout.parent, ignore_errors=True)
        _git(repo, "worktree", "prune")


def _build(repo):
    _git(repo, "init", "--quiet")
    _commit_master(repo)
    for branch in FEATURES:
        _add_feature(repo, branch, "master")
    if _git(repo, "status", "--porcelain"):
        raise RuntimeError(f"demo repository {repo} has uncommitted files")


def _add_missing_features(path, branches):
    """An older Trainyard's demo: add the feature branches it lacks, from where its first
    feature branches started (master may have moved on since, with merges). Its existing
    branches stay as they are: builds, pull requests and merges may point at them."""
    fork_point = _git(path, "merge-base", "--octopus", *FIRST_BRANCHES).strip()
    for branch in FEATURES:
        if branch not in branches:
            _add_feature(path, branch, fork_point)


def create_demo_repository(path: Path) -> Path:
    """Create the demo repository at `path` (a non-bare repo, HEAD on master).

    Idempotent: an existing repository with the demo branches is left as it is; one made
    by an older Trainyard (without feature/bye) gets the branches it lacks, and keeps the
    rest, authors included (feature/hello by Ari Author there, not Alice).
    """
    path = Path(path).absolute()
    if _is_complete(path):
        return path
    if _is_older_demo(path):
        _add_missing_features(path, _branches(path))
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
