"""Wall pages: one per repository and one for all of them, `snapshot.json`, and the
wall's controls.

The page carries the wall's snapshot (`radiators.snapshot.wall_snapshot`) as JSON data
and radiator.js draws every panel from it; live updates (the socket) or, without one, a
poll of `snapshot.json` replace panels as they change. Walls stay readable anonymously.

Controls are for signed-in users only and never on a kiosk page: every button and the
command box post (CSRF-protected) to `command`, which runs the chat-ops command through
`pipeline.chatops.run` / `execute`, where permissions are checked like at every other
door. What changes reaches every open screen through the events, not this response.
"""

import functools
import json

from django.core.exceptions import PermissionDenied
from django.http import Http404, JsonResponse
from django.shortcuts import get_object_or_404, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST, require_safe

from pipeline import chatops, permissions
from pipeline.models import DeployTrain, Repository
from radiators import claims
from radiators.kiosk import can_view_walls
from radiators.kiosk import socket_url as kiosk_socket_url
from radiators.snapshot import wall_snapshot

# What a button may ask for (the command box takes any chat-ops text).
BUTTONS = {"good", "bad", "force", "rollback", "bb", "status", "why"}
MAX_TEXT = 500




def _repository(name):
    return get_object_or_404(Repository.objects.select_related("wall_layout"), name=name)


def render_wall(request, repository, *, kiosk=False):
    """The wall page of `repository` (None: all repositories). With `kiosk`, nothing but
    the panels: no controls, no forms, no user name."""
    snapshot = wall_snapshot(repository)
    user = request.user
    controls = not kiosk and user.is_authenticated
    name = repository.name if repository is not None else None
    # A kiosk page's socket carries its token (set by radiators.kiosk.kiosk_wall).
    socket = getattr(request, "wall_socket_url", None) or kiosk_socket_url(repository)
    return render(request, "radiators/wall.html", {
        "repository": repository,
        "snapshot": snapshot,
        "snapshot_url": f"/radiators/{name}/snapshot.json" if name else "/radiators/snapshot.json",
        "socket_url": socket,
        "kiosk": kiosk,
        "controls": controls and repository is not None,
        "claims": controls,
        "username": user.get_username() if controls else "",
        "release_manager": controls and permissions.can(user, "force"),
    })


def _viewable(view):
    """Walls are public unless TRAINYARD_WALLS_PUBLIC is off: then signed-in users only
    (wall screens use a kiosk link instead)."""
    @functools.wraps(view)
    def wrapper(request, *args, **kwargs):
        if not can_view_walls(request.user):
            from django.contrib.auth.views import redirect_to_login

            return redirect_to_login(request.get_full_path())
        return view(request, *args, **kwargs)
    return wrapper


@require_safe
@never_cache
@_viewable
def radiator(request, name):
    return render_wall(request, _repository(name))


@require_safe
@never_cache
@_viewable
def radiator_all(request):
    return render_wall(request, None)


@require_safe
@never_cache
@_viewable
def snapshot(request, name=None):
    repository = _repository(name) if name is not None else None
    return JsonResponse(wall_snapshot(repository))


def _body(request):
    try:
        data = json.loads(request.body or b"{}")
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise ValueError("send a JSON object")
    return data


def _answer(message, status=200, **extra):
    return JsonResponse({"ok": status == 200, "message": message, **extra}, status=status)


@require_POST
def command(request, name):
    """A button ({"command": "good", "args": [...], "train": id}) or the command box
    ({"text": "!why master"}), run as the signed-in user through pipeline.chatops."""
    if not request.user.is_authenticated:
        return _answer("sign in to act from the wall", 403)
    repository = _repository(name)
    try:
        data = _body(request)
        text = data.get("text")
        if text is not None:
            if not isinstance(text, str) or len(text) > MAX_TEXT:
                raise ValueError(f"a command is text of at most {MAX_TEXT} characters")
            outcome = chatops.execute(repository, text, user=request.user, via="wall")
        else:
            name_, args, train = _button(repository, data)
            outcome = chatops.run(repository, name_, args, user=request.user, via="wall",
                                  train=train)
    except PermissionDenied as exc:
        return _answer(str(exc) or "not allowed", 403)
    except chatops.CommandError as exc:
        return _answer(str(exc), exc.status)
    except ValueError as exc:
        return _answer(str(exc), 400)
    return _answer(outcome.message)


def _button(repository, data):
    name = data.get("command")
    if name not in BUTTONS:
        raise ValueError(f"unknown button {name!r}")
    args = data.get("args") or []
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args) \
            or sum(map(len, args)) > MAX_TEXT:
        raise ValueError("args: a list of words")
    train = None
    if data.get("train") is not None:
        try:
            train = DeployTrain.objects.get(pk=int(data["train"]), repository=repository)
        except (TypeError, ValueError, DeployTrain.DoesNotExist):
            raise ValueError("no such train of this repository") from None
    return name, [a for a in args if a.strip()], train


@require_POST
def claim(request, name):
    """{"branch": ..., "release": false}: "I'm on it" for a broken branch (or no more)."""
    if not request.user.is_authenticated:
        return _answer("sign in to claim a break", 403)
    repository = _repository(name)
    try:
        data = _body(request)
        branch = data.get("branch")
        if not isinstance(branch, str) or not branch:
            raise ValueError("which branch?")
        if data.get("release"):
            claims.release(repository, branch, request.user)
            return _answer(f"{branch} is no longer claimed")
        claims.claim(repository, branch, request.user, note=str(data.get("note") or "")[:200])
    except (ValueError, claims.ClaimError) as exc:
        return _answer(str(exc), 400)
    except Http404:
        raise
    return _answer(f"{request.user.get_username()} is on {branch}")
