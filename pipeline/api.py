"""The HTTP API: what the command line and scripts use. Thin: authenticate, authorise,
parse, call one service (or the chat-ops executor), answer JSON.

Order matters: the caller is authenticated, and authorised where the endpoint names its
permission, before the body is read at all; a body is then at most MAX_BODY bytes and
MAX_DEPTH levels deep. Every refusal is JSON with an `error` sentence, 404s included
("no repository named 'x'; known: demo, app").
"""

import json
import re
from functools import wraps

from django.core import signing
from django.core.exceptions import PermissionDenied
from django.http import Http404, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from nodes.models import Node
from nodes.services import pool
from nodes.transports import TransportError
from pipeline import chatops, permissions
from pipeline.models import ApiToken, Build, DeployTrain, Job, PullRequest, Repository
from pipeline.serializers import (
    build_to_dict,
    lock_to_dict,
    node_to_dict,
    pull_to_dict,
    repository_to_dict,
)
from pipeline.services import merge, pulls, repositories, trains

MAX_BODY = 64 * 1024
MAX_DEPTH = 20
LOG_PAGE = 200
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
PULL_STATES = {"open": [PullRequest.State.OPEN], "merged": [PullRequest.State.MERGED],
               "closed": [PullRequest.State.CLOSED], "all": list(PullRequest.State)}
NODE_FIELDS = ("name", "base_path", "app_port", "transport", "host", "ssh_port", "user",
               "environment", "repository", "env")
REPOSITORY_FIELDS = ("name", "clone_url", "default_branch", "spec_path")
_STRUCTURE = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]')


class ApiError(Exception):
    def __init__(self, message, status=400):
        super().__init__(message)
        self.status = status


def _error(message, status):
    return JsonResponse({"error": message}, status=status)


def _bearer_user(request):
    header = request.headers.get("Authorization", "")
    if not header.startswith("Bearer "):
        return None
    token = (ApiToken.objects.select_related("user")
             .filter(key_hash=ApiToken.hash(header[7:].strip())).first())
    if token is None or not token.user.is_active:
        raise ApiError("invalid API token", 401)
    ApiToken.objects.filter(pk=token.pk).update(last_used_at=timezone.now())
    return token.user


def _authenticate(request):
    """Bearer token, else the session (whose writes need their CSRF token); anonymous
    callers may read, never write."""
    user = _bearer_user(request)
    if user is not None:
        request.user = user
        return
    if request.method in SAFE_METHODS:
        return
    if not request.user.is_authenticated:
        raise ApiError("log in, or send an API token (Authorization: Bearer …)", 401)
    if CsrfViewMiddleware(lambda r: None).process_view(request, None, (), {}) is not None:
        raise ApiError("CSRF check failed: send the page's CSRF token, or use an API token", 403)


def _check_length(request):
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise ApiError("Content-Length is not a number") from None
    if length > MAX_BODY:
        raise ApiError(f"the request body is larger than {MAX_BODY // 1024} KiB", 413)


def api_endpoint(**actions):
    """The HTTP methods a view answers, each with the permission action it needs (None:
    anyone may read; any logged-in caller may write, the service checks the rest)."""

    def decorate(view):
        @csrf_exempt
        @wraps(view)
        def wrapper(request, *args, **kwargs):
            if request.method not in actions:
                return _error(f"use {' or '.join(actions)}", 405)
            try:
                _authenticate(request)
                if actions[request.method]:
                    permissions.require(request.user, actions[request.method])
                _check_length(request)
                return view(request, *args, **kwargs)
            except ApiError as exc:
                return _error(str(exc), exc.status)
            except PermissionDenied as exc:
                status = 403 if request.user.is_authenticated else 401
                return _error(str(exc) or "permission denied", status)
            except Http404 as exc:
                return _error(str(exc) or "not found", 404)

        return wrapper

    return decorate


def _json_body(request):
    body = request.body
    if len(body) > MAX_BODY:
        raise ApiError(f"the request body is larger than {MAX_BODY // 1024} KiB", 413)
    if _depth(body) > MAX_DEPTH:
        raise ApiError(f"the JSON body is nested more than {MAX_DEPTH} levels deep")
    try:
        data = json.loads(body or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(f"body is not JSON: {exc}") from exc
    except RecursionError as exc:  # the depth check above should make this unreachable
        raise ApiError(f"the JSON body is nested more than {MAX_DEPTH} levels deep") from exc
    if not isinstance(data, dict):
        raise ApiError("body must be a JSON object")
    return data


def _depth(body):
    """How deep brackets nest in `body`, strings skipped; without parsing it."""
    depth = deepest = 0
    for token in _STRUCTURE.findall(body):
        if token in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        elif token in (b"]", b"}"):
            depth -= 1
    return deepest


def _fields(body, allowed, required):
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise ApiError(f"unknown field(s) {', '.join(unknown)}; expected {', '.join(allowed)}")
    missing = [name for name in required if name not in body]
    if missing:
        raise ApiError(f"{', '.join(repr(m) for m in missing)} required")
    return {name: body[name] for name in allowed if name in body}


def _repository(name):
    try:
        return repositories.get_repository(name)
    except repositories.RepositoryError as exc:
        raise ApiError(str(exc), 404) from exc


def _node(name):
    try:
        return pool.get_node(name)
    except pool.NodeError as exc:
        raise ApiError(str(exc), 404) from exc


# Builds and chat-ops --------------------------------------------------------------------

def _run_command(request, repository, text=None, *, name=None, args=(), user=None, train=None):
    """Run a chat-ops command as `user` (the caller, or whom it acts for); the answer is
    {"message"} plus the build, train (its status) or lock the command made or changed."""
    user = user or request.user
    actor = request.user if user != request.user else None
    try:
        if text is not None:
            outcome = chatops.execute(repository, text, user=user, via="api", actor=actor)
        else:
            outcome = chatops.run(repository, name, list(args), user=user, via="api",
                                  train=train, actor=actor)
    except chatops.CommandError as exc:
        return _error(str(exc), exc.status)
    body = {"message": outcome.message, **outcome.data}
    if outcome.build is not None:
        body["build"] = build_to_dict(outcome.build)
    if outcome.train is not None and "train" not in body:
        body["train"] = trains.status(outcome.train)
    return JsonResponse(body, status=201 if outcome.created else 200)


@api_endpoint(GET=None, POST=None)  # POST: chat-ops checks `build`
def build_collection(request, repository):
    repository = _repository(repository)
    if request.method == "GET":
        builds = repository.builds.select_related("repository", "requested_by")[:50]
        return JsonResponse({"builds": [build_to_dict(b, jobs=[]) for b in builds]})
    branch = _json_body(request).get("branch")
    if not isinstance(branch, str) or not branch:
        return _error("'branch' is required", 400)
    return _run_command(request, repository, name="bb", args=[branch])


@api_endpoint(POST=None)  # chat-ops checks the command's own permission
def command(request, repository):
    repository = _repository(repository)
    body = _fields(_json_body(request), ("text", "as"), ())
    if not isinstance(body.get("text"), str):
        return _error("'text' is required", 400)
    return _run_command(request, repository, body["text"], user=_acting(request, body))


@api_endpoint(GET=None)
def build_detail(request, build_id):
    build = (Build.objects.select_related("repository", "requested_by").filter(pk=build_id).first())
    if build is None:
        raise ApiError(f"no build #{build_id}", 404)
    return JsonResponse(build_to_dict(build))


@api_endpoint(GET=None)
def job_log(request, job_id):
    """Log chunks after `after` (a sequence number), for pages following a running job."""
    job = Job.objects.filter(pk=job_id).first()
    if job is None:
        raise ApiError(f"no job #{job_id}", 404)
    try:
        after = int(request.GET.get("after", -1))
    except ValueError:
        return _error("'after' must be a number", 400)
    chunks = list(job.log_chunks.filter(seq__gt=after).values_list("seq", "text")[:LOG_PAGE])
    return JsonResponse({
        "job": job.pk, "status": job.status,
        "chunks": [{"seq": seq, "text": text} for seq, text in chunks],
    })


# Pull requests --------------------------------------------------------------------------

@api_endpoint(GET=None, POST="open_pull_request")
def pull_collection(request, repository):
    repository = _repository(repository)
    if request.method == "GET":
        state = request.GET.get("state", "open")
        if state not in PULL_STATES:
            return _error(f"'state' is one of {', '.join(PULL_STATES)}", 400)
        recent = repository.pull_requests.filter(state__in=PULL_STATES[state])[:100]
        return JsonResponse({"pull_requests": [pull_to_dict(pr) for pr in recent]})
    body = _json_body(request)
    branch, title = body.get("branch"), body.get("title", "")
    if not isinstance(branch, str) or not isinstance(title, str):
        return _error("'branch' (and an optional 'title') are strings", 400)
    try:
        pr, created = pulls.open_pull_request(repository, branch, title=title[:300],
                                              user=request.user)
    except pulls.PullRequestError as exc:
        return _error(str(exc), 400)
    return JsonResponse(pull_to_dict(pr), status=201 if created else 200)


def _pull(repository, number):
    pr = repository.pull_requests.filter(number=number).first()
    if pr is None:
        numbers = list(repository.pull_requests.filter(state=PullRequest.State.OPEN)
                       .values_list("number", flat=True)[:20])
        known = f"open: {', '.join(f'#{n}' for n in numbers)}" if numbers else \
            "it has no open pull requests"
        raise ApiError(f"no pull request #{number} in {repository.name}; {known}", 404)
    return pr


def _merge_view(pr):
    """A pull request as the API shows it, with its LGTMs and merge commit."""
    return {**pull_to_dict(pr), "merge_sha": pr.merge_sha,
            "lgtms": [lgtm.user.get_username() for lgtm in pr.counted_lgtms()],
            "merge_blockers": merge.merge_blockers(pr)}


@api_endpoint(POST="close_pull_request")
def pull_close(request, repository, number):
    repository = _repository(repository)
    pr = _pull(repository, number)
    pulls.close_pull_request(pr, reason=f"closed by {request.user.get_username()}",
                             user=request.user)
    pr.refresh_from_db()
    return JsonResponse(pull_to_dict(pr))


def _acting(request, body):
    """The caller, or the user named by `as` when the caller may act for others."""
    name = body.get("as")
    if name is None:
        return request.user
    if not isinstance(name, str) or not name:
        raise ApiError("'as' is a user name")
    from django.contrib.auth import get_user_model

    other = get_user_model().objects.filter(username=name, is_active=True).first()
    if other is None:
        permissions.require(request.user, "act_for_others")  # no probing for names first
        raise ApiError(f"no active user named {name!r}")
    return permissions.acting_user(request.user, other)


def _reviewer(request, body):
    reviewer = _acting(request, body)
    permissions.require(reviewer, "lgtm")
    return reviewer


@api_endpoint(POST="lgtm")
def pull_lgtm(request, repository, number):
    repository = _repository(repository)
    pr = _pull(repository, number)
    reviewer = _reviewer(request, _json_body(request))
    try:
        _, created = pulls.give_lgtm(pr, reviewer, actor=request.user)
    except pulls.PullRequestError as exc:
        return _error(str(exc), 409)
    return JsonResponse(_merge_view(pr), status=201 if created else 200)


@api_endpoint(POST="merge")
def pull_merge(request, repository, number):
    repository = _repository(repository)
    pr = _pull(repository, number)
    try:
        _, build = merge.merge_pull_request(pr, user=request.user)
    except merge.MergeRefused as exc:
        return _error(str(exc), 409)
    pr.refresh_from_db()
    body = _merge_view(pr)
    body["master_build"] = build_to_dict(build, jobs=[]) if build else None
    return JsonResponse(body)


# Deploy trains --------------------------------------------------------------------------
#
# Every change goes through chat-ops (`chatops.run`), which checks the permission: the
# same refusals as `!good`, `!force`, … typed anywhere else. `as` acts for another user.

TRAINS_LISTED = 20


def _train(train_id):
    train = DeployTrain.objects.select_related("repository").filter(pk=train_id).first()
    if train is None:
        raise ApiError(f"no deploy train #{train_id}", 404)
    return train


def _text(body, name, *, required=False):
    value = body.get(name, "")
    if not isinstance(value, str) or (required and not value.strip()):
        raise ApiError(f"'{name}' is {'a required' if required else 'a'} string")
    return value


def _flag(body, name):
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise ApiError(f"'{name}' is true or false")
    return value


@api_endpoint(GET=None, POST=None)  # POST: chat-ops checks `start_train`
def train_collection(request, repository):
    repository = _repository(repository)
    if request.method == "GET":
        recent = repository.trains.select_related("repository")[:TRAINS_LISTED]
        return JsonResponse({"trains": [trains.status(train) for train in recent]})
    body = _fields(_json_body(request), ("as",), ())
    return _run_command(request, repository, name="train", user=_acting(request, body))


@api_endpoint(GET=None)
def train_current(request, repository):
    repository = _repository(repository)
    train = trains.current_train(repository)
    if train is None:
        raise ApiError(f"{repository.name} has no deploy train yet", 404)
    return JsonResponse(trains.status(train))


@api_endpoint(GET=None)
def train_detail(request, train_id):
    return JsonResponse(trains.status(_train(train_id)))


TRAIN_ACTIONS = {  # action -> (fields, chat-ops command)
    "approve": (("as",), "good"),
    "veto": (("reason", "as"), "bad"),
    "force": (("reason", "override_veto", "override_lock", "as"), "force"),
}


@api_endpoint(POST=None)  # chat-ops checks `approve` or `force`
def train_action(request, train_id, action):
    if action not in TRAIN_ACTIONS:
        raise ApiError(f"no train action {action!r}; use {', '.join(TRAIN_ACTIONS)}", 404)
    train = _train(train_id)
    allowed, name = TRAIN_ACTIONS[action]
    body = _fields(_json_body(request), allowed, ())
    args = []
    if action == "veto":
        args = [_text(body, "reason", required=True)]
    elif action == "force":
        args = [f"--{flag.replace('_', '-')}" for flag in ("override_veto", "override_lock")
                if _flag(body, flag)] + ["--", _text(body, "reason", required=True)]
    return _run_command(request, train.repository, name=name, args=args, train=train,
                        user=_acting(request, body))


@api_endpoint(POST=None)  # chat-ops checks `rollback`
def rollback(request, repository):
    repository = _repository(repository)
    body = _fields(_json_body(request), ("reason", "as"), ("reason",))
    return _run_command(request, repository, name="rollback",
                        args=[_text(body, "reason", required=True)], user=_acting(request, body))


def _open_locks(repository):
    return repository.locks.filter(released_at__isnull=True).select_related("locked_by",
                                                                              "released_by")


@api_endpoint(GET=None, POST=None)  # POST: chat-ops checks `lock`
def lock_collection(request, repository):
    """GET: the open locks. POST {reason, environment?, expires? ("2h"), as?}: lock."""
    repository = _repository(repository)
    if request.method == "GET":
        return JsonResponse({"locks": [lock_to_dict(lock) for lock in _open_locks(repository)]})
    body = _fields(_json_body(request), ("reason", "environment", "expires", "as"), ("reason",))
    args = ["--environment", _text(body, "environment")]
    if body.get("expires"):
        args += ["--expires", _text(body, "expires")]
    args += ["--", _text(body, "reason", required=True)]
    return _run_command(request, repository, name="lock", args=args, user=_acting(request, body))


@api_endpoint(POST=None)  # chat-ops checks `lock`
def unlock(request, repository):
    repository = _repository(repository)
    body = _fields(_json_body(request), ("environment", "as"), ())
    return _run_command(request, repository, name="unlock",
                        args=["--environment", _text(body, "environment")],
                        user=_acting(request, body))


# Repositories ---------------------------------------------------------------------------

@api_endpoint(GET=None, POST="add_repository")
def repository_collection(request):
    if request.method == "GET":
        listed = Repository.objects.prefetch_related("nodes")
        return JsonResponse({"repositories": [repository_to_dict(r) for r in listed]})
    fields = _fields(_json_body(request), REPOSITORY_FIELDS, ("name", "clone_url"))
    try:
        repository = repositories.add_repository(**fields, user=request.user)
    except repositories.RepositoryError as exc:
        return _error(str(exc), 400)
    return JsonResponse(repository_to_dict(repository), status=201)


@api_endpoint(GET=None, DELETE="remove_repository")
def repository_detail(request, name):
    repository = _repository(name)
    if request.method == "GET":
        return JsonResponse(repository_to_dict(repository))
    try:
        removed = repositories.remove_repository(repository, user=request.user)
    except repositories.RepositoryError as exc:
        return _error(str(exc), 409)
    return JsonResponse({"removed": removed, "message": f"removed repository {removed}"})


# Nodes ----------------------------------------------------------------------------------

def _nodes():
    return Node.objects.select_related("repository", "lease__repository")


@api_endpoint(GET="view_nodes", POST="add_node")
def node_collection(request):
    if request.method == "GET":
        return JsonResponse({"nodes": [node_to_dict(node) for node in _nodes()]})
    fields = _fields(_json_body(request), NODE_FIELDS, ("name", "base_path", "app_port"))
    try:
        node = pool.add_node(**fields, actor=request.user)
    except pool.NodeError as exc:
        return _error(str(exc), 400)
    return JsonResponse(node_to_dict(_nodes().get(pk=node.pk)), status=201)


@api_endpoint(GET="view_nodes", DELETE="remove_node")
def node_detail(request, name):
    node = _node(name)
    if request.method == "GET":
        return JsonResponse(node_to_dict(_nodes().get(pk=node.pk)))
    try:
        removed = pool.remove_node(node, actor=request.user)
    except pool.NodeError as exc:
        return _error(str(exc), 409)
    return JsonResponse({"removed": removed, "message": f"removed node {removed}"})


NODE_ACTIONS = {"enable": "enabled", "disable": "disabled", "drain": "draining",
                "undrain": "no longer draining"}


@api_endpoint(POST="change_node")
def node_action(request, name, action):
    if action not in NODE_ACTIONS:
        raise ApiError(f"no node action {action!r}; use {', '.join(NODE_ACTIONS)} or host-key", 404)
    node = _node(name)
    changed = pool.change_node(node, action, actor=request.user)
    state = NODE_ACTIONS[action]
    message = f"{node.name}: {state}" if changed else f"{node.name} was {state} already"
    return JsonResponse({"changed": changed, "message": message,
                         "node": node_to_dict(_nodes().get(pk=node.pk))})


@api_endpoint(GET="change_node", POST="change_node")
def node_host_key(request, name):
    """GET: the key the node offers now, its fingerprint and a signed token (10 minutes).
    POST {token, fingerprint}: pin that key, if it has the fingerprint the caller compared."""
    node = _node(name)
    if request.method == "GET":
        try:
            line, fingerprint, token = pool.offer_host_key(node)
        except TransportError as exc:
            return _error(str(exc), 502)
        return JsonResponse({"node": node.name, "key": line, "fingerprint": fingerprint,
                             "token": token, "pinned_fingerprint": pool.pinned_fingerprint(node)})
    body = _fields(_json_body(request), ("token", "fingerprint"), ("token", "fingerprint"))
    if not isinstance(body["token"], str) or not isinstance(body["fingerprint"], str):
        return _error("'token' and 'fingerprint' are strings", 400)
    try:
        pool.pin_host_key(node, body["token"], fingerprint=body["fingerprint"], user=request.user)
    except pool.HostKeyMismatch as exc:
        return _error(str(exc), 409)
    except pool.NodeError as exc:
        return _error(str(exc), 400)
    except signing.BadSignature:
        return _error("that confirmation expired or was altered: fetch the host key again", 400)
    node = _nodes().get(pk=node.pk)
    return JsonResponse({"message": f"{node.name}: host key {pool.pinned_fingerprint(node)} pinned; "
                                    f"health {node.health}", "node": node_to_dict(node)})


@csrf_exempt
def not_found(request, rest):
    return _error(f"no API endpoint {request.method} /api/{rest}", 404)
