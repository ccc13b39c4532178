"""Chat-ops commands: one parser, many doors (buttons, command box, API, CLI).

`execute` parses the text, checks permission once, and calls one service.
"""

import shlex
from dataclasses import dataclass, field

from pipeline import permissions
from pipeline.services.builds import BuildRequestError, QueueUnavailable, request_build


class CommandError(ValueError):
    status = 400


class Unavailable(CommandError):
    """A service the command needs is away: try again later (HTTP 503)."""

    status = 503


@dataclass
class Outcome:
    message: str
    build: object = None
    created: bool = False
    data: dict = field(default_factory=dict)


def parse(text):
    """'!bb feature/x' -> ('bb', ['feature/x'])."""
    text = (text or "").strip()
    if not text.startswith("!"):
        raise CommandError("commands start with '!', for example: !bb feature/my-branch")
    try:
        words = shlex.split(text[1:])
    except ValueError as exc:
        raise CommandError(f"cannot read the command: {exc}") from exc
    if not words:
        raise CommandError("empty command")
    return words[0].lower(), words[1:]


def _build_branch(repository, args, user, via):
    if len(args) != 1:
        raise CommandError("usage: !bb <branch>")
    permissions.require(user, "build")
    try:
        build, created = request_build(repository, args[0], user=user, via=via)
    except QueueUnavailable as exc:
        raise Unavailable(str(exc)) from exc
    except BuildRequestError as exc:
        raise CommandError(str(exc)) from exc
    verb = "queued" if created else "already building as"
    return Outcome(f"{verb} build #{build.pk} of {build.branch} at {build.sha[:10]}", build, created)


COMMANDS = {"bb": _build_branch}


def execute(repository, text, *, user, via):
    name, args = parse(text)
    return run(repository, name, args, user=user, via=via)


def run(repository, name, args, *, user, via):
    """Run an already-parsed command (buttons and the API pass arguments directly)."""
    handler = COMMANDS.get(name)
    if handler is None:
        raise CommandError(f"unknown command !{name}; known: {', '.join('!' + c for c in COMMANDS)}")
    return handler(repository, args, user, via)
