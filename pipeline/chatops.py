"""Chat-ops commands: one parser, many doors (buttons, command box, API, CLI).

`execute` parses the text; `run` checks the command's permission, once, and calls one
service. Every door goes through `run`, so a command is refused the same way everywhere.

    !bb <branch>                                        build a branch
    !train                                              start a deploy train now
    !good                                               approve the active train
    !bad <reason>                                       veto it
    !force <reason> [--override-veto] [--override-lock] skip the waiting for approvals
    !rollback <reason>                                  production back to its previous SHA
    !status                                             the current train
    !why <sha|branch>                                   what it waits for
    !lock [env] <reason> [--expires 2h]                 lock an environment (or all of them)
    !unlock [env]                                       release that lock
"""

import re
import shlex
from dataclasses import dataclass, field
from datetime import timedelta

from django.utils import timezone

from nodes.models import Node
from pipeline import permissions
from pipeline.models import Approval
from pipeline.serializers import lock_to_dict
from pipeline.services import trains
from pipeline.services.builds import BuildRequestError, QueueUnavailable, request_build

# The environments a lock may name (`!lock staging …`); branch nodes are never locked.
LOCKABLE = [env for env in Node.Environment.values if env != Node.Environment.BRANCH]
_DURATION = re.compile(r"(\d+)([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


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
    train: object = None


@dataclass
class Context:
    """Who runs a command, through which door, and (buttons, the API) on which train."""

    user: object
    via: str
    train: object = None


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


def split_options(args, usage, *, flags=(), values=()):
    """(the words, {option: True or its value}) from `args`; `--name value` or
    `--name=value` for `values`. An unknown option is a usage error, never a reason word;
    after a lone `--` every word is a word (a reason may start with dashes)."""
    words, options, rest = [], {}, list(args)
    while rest:
        word = rest.pop(0)
        if word == "--":
            words += rest
            break
        if not word.startswith("--"):
            words.append(word)
            continue
        name, has_value, value = word.partition("=")
        if name in flags and not has_value:
            options[name] = True
        elif name in values and (has_value or rest):
            options[name] = value if has_value else rest.pop(0)
        else:
            raise CommandError(f"usage: {usage}")
    return words, options


def parse_expiry(text, now=None):
    """'2h', '30m', '1d12h' -> the moment that long from now."""
    text = text.strip().lower()
    if not text or _DURATION.sub("", text):
        raise CommandError(f"--expires takes a duration such as 30m, 2h or 1d, not {text!r}")
    delta = timedelta()
    for amount, unit in _DURATION.findall(text):
        delta += timedelta(**{_UNITS[unit]: int(amount)})
    if not delta:
        raise CommandError("--expires must be longer than nothing")
    return (now or timezone.now()) + delta


# Builds ---------------------------------------------------------------------------------

def _build_branch(repository, args, ctx):
    if len(args) != 1:
        raise CommandError("usage: !bb <branch>")
    try:
        build, created = request_build(repository, args[0], user=ctx.user, via=ctx.via)
    except QueueUnavailable as exc:
        raise Unavailable(str(exc)) from exc
    except BuildRequestError as exc:
        raise CommandError(str(exc)) from exc
    verb = "queued" if created else "already building as"
    return Outcome(f"{verb} build #{build.pk} of {build.branch} at {build.sha[:10]}", build, created)


# Trains ---------------------------------------------------------------------------------

def _train_in_question(repository, ctx, *, vetoed_too=False):
    """The train a button or the API named, else the repository's active one."""
    if ctx.train is not None:
        return ctx.train
    train = trains.current_train(repository)
    if train is None:
        raise CommandError(f"{repository.name} has no deploy train yet: start one with !train")
    if train.is_active or (vetoed_too and train.status == train.Status.VETOED):
        return train
    raise CommandError(f"{repository.name} has no active deploy train: train #{train.pk} "
                       f"ended {train.status}")


def _who(ctx):
    return ctx.user.get_username()


def _reason(words, usage):
    reason = " ".join(words).strip()
    if not reason:
        raise CommandError(f"usage: {usage} (a reason is required)")
    return reason


def _start_train(repository, args, ctx):
    if args:
        raise CommandError("usage: !train (starts a deploy train now)")
    train = trains.start_train(repository, user=ctx.user, via=ctx.via)
    return Outcome(f"started {repository.name} train #{train.pk} with {train.head_sha[:10]}",
                   created=True, train=train)


def _good(repository, args, ctx):
    if args:
        raise CommandError("usage: !good (approves the active train)")
    train = _train_in_question(repository, ctx)
    trains.answer(train, ctx.user, Approval.Verdict.GOOD, via=ctx.via)
    train.refresh_from_db()
    return Outcome(f"{_who(ctx)} says good to train #{train.pk} ({train.head_sha[:10]}); "
                   f"the train is {train.status}", train=train)


def _bad(repository, args, ctx):
    reason = _reason(args, "!bad <reason>")
    train = _train_in_question(repository, ctx)
    trains.answer(train, ctx.user, Approval.Verdict.BAD, reason, via=ctx.via)
    train.refresh_from_db()
    return Outcome(f"{_who(ctx)} vetoed train #{train.pk} ({train.head_sha[:10]}): {reason}",
                   train=train)


FORCE_USAGE = "!force <reason> [--override-veto] [--override-lock]"


def _force(repository, args, ctx):
    words, options = split_options(args, FORCE_USAGE, flags=("--override-veto", "--override-lock"))
    reason = _reason(words, FORCE_USAGE)
    train = _train_in_question(repository, ctx, vetoed_too=True)
    trains.force(train, ctx.user, reason, override_veto="--override-veto" in options,
                 override_lock="--override-lock" in options, via=ctx.via)
    train.refresh_from_db()
    return Outcome(f"{_who(ctx)} forced train #{train.pk} ({train.head_sha[:10]}): {reason}; "
                   f"the train is {train.status}", train=train)


def _rollback(repository, args, ctx):
    reason = _reason(args, "!rollback <reason>")
    train = trains.start_rollback(repository, ctx.user, reason, via=ctx.via)
    return Outcome(f"started rollback train #{train.pk}: production goes back to "
                   f"{train.head_sha[:10]}", created=True, train=train)


def _status(repository, args, ctx):
    if args:
        raise CommandError("usage: !status")
    train = ctx.train or trains.current_train(repository)
    if train is None:
        return Outcome(f"{repository.name} has no deploy train yet")
    data = trains.status(train)
    return Outcome(summary(data), train=train, data={"train": data})


def _why(repository, args, ctx):
    if len(args) != 1:
        raise CommandError("usage: !why <sha|branch>")
    return Outcome(trains.why(repository, args[0]))


LOCK_USAGE = f"!lock [{'|'.join(LOCKABLE)}] <reason> [--expires 2h]"


def _environment(words, options, *, lone_word=False):
    """The environment a command names (`--environment`, else a first word that is one;
    for `!lock` only when a reason follows it); "" is the whole repository."""
    if "--environment" in options:
        environment = options["--environment"]
    elif words and (lone_word or (len(words) > 1 and words[0] in LOCKABLE)):
        environment = words.pop(0)
    else:
        environment = ""
    if environment and environment not in LOCKABLE:
        raise CommandError(f"no environment {environment!r}; lockable: {', '.join(LOCKABLE)}")
    return environment


def _lock(repository, args, ctx):
    words, options = split_options(args, LOCK_USAGE, values=("--expires", "--environment"))
    environment = _environment(words, options)
    reason = _reason(words, LOCK_USAGE)
    expires_at = parse_expiry(options["--expires"]) if options.get("--expires") else None
    lock = trains.lock(repository, ctx.user, reason, environment=environment,
                       expires_at=expires_at, via=ctx.via)
    until = f" until {timezone.localtime(lock.expires_at):%Y-%m-%d %H:%M}" if lock.expires_at else ""
    return Outcome(f"{_who(ctx)} locked {_scope(repository, environment)}{until}: {reason}",
                   created=True, data={"lock": lock_to_dict(lock)})


def _unlock(repository, args, ctx):
    usage = f"!unlock [{'|'.join(LOCKABLE)}]"
    words, options = split_options(args, usage, values=("--environment",))
    if len(words) > 1:
        raise CommandError(f"usage: {usage}")
    environment = _environment(words, options, lone_word=True)
    lock = trains.unlock(repository, ctx.user, environment=environment, via=ctx.via)
    return Outcome(f"{_who(ctx)} unlocked {_scope(repository, environment)}",
                   data={"lock": lock_to_dict(lock)})


def _scope(repository, environment):
    return f"{repository.name} {environment}" if environment else f"all of {repository.name}"


def summary(data):
    """One line about a train, from its `trains.status` dict."""
    waiting = [a["username"] for a in data["authors"] if not a["answer"]]
    line = f"{data['repository']} train #{data['id']} {data['status']} at {data['head_sha'][:10]}"
    if data.get("message"):
        line += f": {data['message']}"
    if data["status"] == "awaiting_approval" and waiting:
        line += f" (waiting for {', '.join(waiting)})"
    return line


# name -> (handler, the permission action it needs; None: anyone may ask)
COMMANDS = {
    "bb": (_build_branch, "build"),
    "train": (_start_train, "start_train"),
    "good": (_good, "approve"),
    "bad": (_bad, "approve"),
    "force": (_force, "force"),
    "rollback": (_rollback, "rollback"),
    "status": (_status, None),
    "why": (_why, None),
    "lock": (_lock, "lock"),
    "unlock": (_unlock, "lock"),
}


def execute(repository, text, *, user, via, actor=None):
    name, args = parse(text)
    return run(repository, name, args, user=user, via=via, actor=actor)


def run(repository, name, args, *, user, via, train=None, actor=None):
    """Run an already-parsed command (buttons and the API pass arguments directly).

    `user` is who the command is done as; `actor`, when someone else, is who typed it
    (`--as`): both need the command's permission, so acting for another never grants
    more than the actor holds. `train`: the one a button or URL names, not the active one.
    Raises CommandError (a TrainError's sentence included) or PermissionDenied.
    """
    if name not in COMMANDS:
        raise CommandError(f"unknown command !{name}; known: {', '.join('!' + c for c in COMMANDS)}")
    handler, action = COMMANDS[name]
    if action:
        for person in {actor, user} - {None}:
            permissions.require(person, action)
    if train is not None and train.repository_id != repository.pk:
        raise CommandError(f"train #{train.pk} is not {repository.name}'s")
    try:
        return handler(repository, list(args), Context(user=user, via=via, train=train))
    except trains.TrainError as exc:
        raise CommandError(str(exc)) from exc
