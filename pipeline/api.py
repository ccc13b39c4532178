"""The HTTP API: what the command line and scripts use. Thin: parse, authenticate, call
the chat-ops executor or read models."""

import json
from functools import wraps

from django.core.exceptions import PermissionDenied
from django.http import JsonResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.shortcuts import get_object_or_404
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from pipeline import chatops, permissions
from pipeline.models import ApiToken, Build, Job, PullRequest, Repository
from pipeline.serializers import build_to_dict, pull_to_dict
from pipeline.services import pulls

MAX_BODY = 64 * 1024
LOG_PAGE = 200


def _bearer_user(request):
    header = request.headers.get("Authorization", "")
    if not header.startswith("Bearer "):
        return None
    token = (ApiToken.objects.select_related("user")
             .filter(key_hash=ApiToken.hash(header[7:].strip())).first())
    if token is None or not token.user.is_active:
        raise PermissionDenied("invalid API token")
    ApiToken.objects.filter(pk=token.pk).update(last_used_at=timezone.now())
    return token.user


def api_endpoint(view):
    """Bearer-token or session auth; session POSTs still need their CSRF token."""

    @csrf_exempt
    @wraps(view)
    def wrapper(request, *args, **kwargs):
        try:
            user = _bearer_user(request)
        except PermissionDenied as exc:
            return JsonResponse({"error": str(exc)}, status=401)
        if user is not None:
            request.user = user
        elif request.method not in ("GET", "HEAD", "OPTIONS"):
            rejected = CsrfViewMiddleware(lambda r: None).process_view(request, None, (), {})
            if rejected is not None:
                return JsonResponse({"error": "CSRF check failed"}, status=403)
        try:
            return view(request, *args, **kwargs)
        except PermissionDenied as exc:
            status = 403 if request.user.is_authenticated else 401
            return JsonResponse({"error": str(exc) or "permission denied"}, status=status)

    return wrapper


def _json_body(request):
    if len(request.body) > MAX_BODY:
        raise ValueError("request body too large")
    try:
        data = json.loads(request.body or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"body is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError("body must be a JSON object")
    return data


def _run_command(request, repository, text=None, *, name=None, args=()):
    try:
        if text is not None:
            outcome = chatops.execute(repository, text, user=request.user, via="api")
        else:
            outcome = chatops.run(repository, name, list(args), user=request.user, via="api")
    except chatops.CommandError as exc:
        return JsonResponse({"error": str(exc)}, status=exc.status)
    body = {"message": outcome.message}
    if outcome.build is not None:
        body["build"] = build_to_dict(outcome.build)
    return JsonResponse(body, status=201 if outcome.created else 200)


@api_endpoint
def build_collection(request, repository):
    repository = get_object_or_404(Repository, name=repository)
    if request.method == "GET":
        builds = repository.builds.select_related("repository", "requested_by")[:50]
        return JsonResponse({"builds": [build_to_dict(b, jobs=[]) for b in builds]})
    if request.method != "POST":
        return JsonResponse({"error": "use GET or POST"}, status=405)
    try:
        branch = _json_body(request).get("branch")
    except ValueError as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    if not isinstance(branch, str) or not branch:
        return JsonResponse({"error": "'branch' is required"}, status=400)
    return _run_command(request, repository, name="bb", args=[branch])


@api_endpoint
def command(request, repository):
    if request.method != "POST":
        return JsonResponse({"error": "use POST"}, status=405)
    repository = get_object_or_404(Repository, name=repository)
    try:
        text = _json_body(request).get("text")
    except ValueError as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    if not isinstance(text, str):
        return JsonResponse({"error": "'text' is required"}, status=400)
    return _run_command(request, repository, text)


@api_endpoint
def pull_collection(request, repository):
    repository = get_object_or_404(Repository, name=repository)
    if request.method == "GET":
        recent = repository.pull_requests.all()[:100]
        return JsonResponse({"pull_requests": [pull_to_dict(pr) for pr in recent]})
    if request.method != "POST":
        return JsonResponse({"error": "use GET or POST"}, status=405)
    try:
        body = _json_body(request)
    except ValueError as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    branch, title = body.get("branch"), body.get("title", "")
    if not isinstance(branch, str) or not isinstance(title, str):
        return JsonResponse({"error": "'branch' (and an optional 'title') are strings"}, status=400)
    permissions.require(request.user, "open_pull_request")
    try:
        pr, created = pulls.open_pull_request(repository, branch, title=title[:300],
                                              user=request.user)
    except pulls.PullRequestError as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    return JsonResponse(pull_to_dict(pr), status=201 if created else 200)


@api_endpoint
def pull_close(request, repository, number):
    if request.method != "POST":
        return JsonResponse({"error": "use POST"}, status=405)
    pr = get_object_or_404(PullRequest, repository__name=repository, number=number)
    permissions.require(request.user, "close_pull_request")
    pulls.close_pull_request(pr, reason=f"closed by {request.user.get_username()}",
                             user=request.user)
    pr.refresh_from_db()
    return JsonResponse(pull_to_dict(pr))


@api_endpoint
def build_detail(request, build_id):
    build = get_object_or_404(Build.objects.select_related("repository", "requested_by"),
                              pk=build_id)
    return JsonResponse(build_to_dict(build))


@api_endpoint
def job_log(request, job_id):
    """Log chunks after `after` (a sequence number), for pages following a running job."""
    job = get_object_or_404(Job, pk=job_id)
    try:
        after = int(request.GET.get("after", -1))
    except ValueError:
        return JsonResponse({"error": "'after' must be a number"}, status=400)
    chunks = list(job.log_chunks.filter(seq__gt=after).values_list("seq", "text")[:LOG_PAGE])
    return JsonResponse({
        "job": job.pk, "status": job.status,
        "chunks": [{"seq": seq, "text": text} for seq, text in chunks],
    })
