"""Registering repositories without the admin: add (after proving git can read them),
list, remove (only when nothing depends on the repository any more).

Every refusal is a RepositoryError whose message says what to do instead.
"""

import posixpath
import re

from django.db import IntegrityError, transaction

from pipeline.models import Build, Repository
from pipeline.services import git
from pipeline.services.events import record_event

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,79}")  # a slug: it is part of URLs and channel names
# scp-like `user@host:path` (git's own rule: a colon before any slash), and URL schemes
# git may use here (git.py refuses every other transport, `ext::` included).
_SCP_LIKE = re.compile(r"[^/:]+:.")
_SCHEMES = ("https://", "http://", "ssh://", "git://", "file://")
_UNSAFE = re.compile(r"[\x00-\x20\x7f]")


class RepositoryError(ValueError):
    pass


def known_names(limit=20):
    """'known: demo, app' (the first `limit`), or a hint when there are none."""
    names = list(Repository.objects.values_list("name", flat=True)[:limit + 1])
    if not names:
        return "there are none yet (manage.py repo add NAME URL)"
    shown = ", ".join(names[:limit])
    return f"known: {shown}" + (", …" if len(names) > limit else "")


def get_repository(name):
    """The repository called `name`, or RepositoryError naming those that exist."""
    repository = Repository.objects.filter(name=name).first() if isinstance(name, str) else None
    if repository is None:
        raise RepositoryError(f"no repository named {name!r}; {known_names()}")
    return repository


def add_repository(name, clone_url, *, default_branch="master", spec_path="trainyard.yml",
                   user=None):
    """Register a repository once git has shown it can read `clone_url` and that
    `default_branch` is there. Takes at most GIT_REQUEST_TIMEOUT for the check."""
    _check_name(name)
    _check_url(clone_url)
    _check_spec_path(spec_path)
    if not isinstance(default_branch, str):
        raise RepositoryError("the default branch must be a branch name")
    try:
        git.validate_branch(default_branch)
    except git.InvalidRef as exc:
        raise RepositoryError(f"default branch: {exc}") from exc
    if Repository.objects.filter(name=name).exists():
        raise RepositoryError(f"a repository named {name!r} exists already")
    _check_readable(clone_url, default_branch)
    try:
        with transaction.atomic():
            repository = Repository.objects.create(name=name, clone_url=clone_url,
                                                   default_branch=default_branch,
                                                   spec_path=spec_path)
            record_event("repository.added", subject=repository, actor=user,
                         message=f"{name} added ({git.redact(clone_url)}, {default_branch})")
    except IntegrityError as exc:  # added by someone else while git was reading
        raise RepositoryError(f"a repository named {name!r} exists already") from exc
    return repository


def remove_repository(repository, *, user=None):
    """Remove a repository and its history (builds, pull requests, events). Refused while
    nodes are reserved for it or a build of it is queued or running."""
    with transaction.atomic():
        reserved = list(repository.nodes.values_list("name", flat=True))
        if reserved:
            raise RepositoryError(
                f"{repository.name} has node(s) reserved for it: {', '.join(reserved)}. Remove them "
                "first (manage.py node remove NAME), or put them in the shared pool in the admin")
        active = list(Build.objects.active().filter(repository=repository)
                      .values_list("pk", flat=True)[:5])
        if active:
            builds = ", ".join(f"#{pk}" for pk in active)
            raise RepositoryError(f"{repository.name} has build(s) queued or running: {builds}. "
                                  "Wait for them to end, then remove it")
        name = repository.name
        # Builds first: a build protects its commit, which the repository would cascade to.
        Build.objects.filter(repository=repository).delete()
        repository.delete()
        # No subject: the repository's own events went with it; this one stays in the log.
        record_event("repository.removed", actor=user, message=f"{name} removed")
    return name


def _check_name(name):
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise RepositoryError(f"{name!r} is not a usable repository name: use letters, digits, "
                              "'-' and '_', starting with a letter or digit, at most 80")


def _check_url(url):
    if not isinstance(url, str) or not url:
        raise RepositoryError("a clone URL or an absolute path is needed")
    if len(url) > Repository._meta.get_field("clone_url").max_length or _UNSAFE.search(url):
        raise RepositoryError("the clone URL must be at most 500 characters, without spaces or "
                              "control characters")
    if url.startswith("-"):
        raise RepositoryError(f"{git.redact(url)!r} is not a clone URL (it starts with '-')")
    if url.startswith(_SCHEMES) or url.startswith("/"):
        return
    if "::" in url.split("/", 1)[0]:
        raise RepositoryError(f"{git.redact(url)!r}: git's '<transport>::' URLs are not allowed")
    if _SCP_LIKE.match(url):
        return  # user@host:path
    raise RepositoryError(f"{git.redact(url)!r} is neither a URL nor an absolute path: the server "
                          "would read a relative path from its own working folder")


def _check_spec_path(path):
    parts = path.split("/") if isinstance(path, str) else []
    if not parts or path.startswith("/") or ".." in parts or posixpath.normpath(path) == "." \
            or _UNSAFE.search(path):
        raise RepositoryError(f"spec path {path!r} must be a path inside the repository")


def _check_readable(url, default_branch):
    try:
        branches = git.remote_branches(url)
    except git.GitError as exc:
        raise RepositoryError(f"git cannot read {git.redact(url)}: {exc}") from exc
    if not branches:
        raise RepositoryError(f"{git.redact(url)} has no branches yet: push {default_branch} first")
    if default_branch not in branches:
        shown = ", ".join(sorted(branches)[:20])
        raise RepositoryError(f"{git.redact(url)} has no branch {default_branch!r}; its branches: "
                              f"{shown}")
