"""Who may watch a wall: kiosk tokens for wall screens, and the socket's one gate.

A kiosk token is a read-only pass to ONE wall (a repository's, or the wall of all
repositories when the token has no repository): its URL /radiators/kiosk/<token>/ shows
that wall with no controls, and its socket URL carries `?kiosk=<token>`. It logs nobody
in and reads nothing else: no other wall, no API, no page. Only its hash is stored (like
API tokens); revoking it closes the screens using it at once (and each hub re-checks its
screens' tokens on every heartbeat, should that message be lost).

Who may watch which wall is decided here, for pages and sockets alike:
- anyone, when TRAINYARD_WALLS_PUBLIC is True (the default, like today's radiators);
- signed-in active users, always;
- a kiosk token, for its own wall only.
"""

import hashlib
import secrets
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.db import transaction
from django.http import Http404, HttpResponse
from django.http.request import split_domain_port, validate_host
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from .events import KIOSK_REVOKED, send_to_walls
from .models import KioskToken

TOKEN_PREFIX = "tyk_"

# Socket close codes (4000-4999 are the application's). A browser sees them only after
# the handshake, so the consumer accepts and then closes: the page can tell "go away"
# from "server away" and stops retrying.
CLOSE_UNAUTHORIZED = 4401
CLOSE_BAD_ORIGIN = 4403
CLOSE_NOT_FOUND = 4404
CLOSE_REVOKED = 4410
FINAL_CLOSE_CODES = {CLOSE_UNAUTHORIZED, CLOSE_BAD_ORIGIN, CLOSE_NOT_FOUND, CLOSE_REVOKED}


def walls_public():
    return settings.TRAINYARD["WALLS_PUBLIC"]


def can_view_walls(user):
    """Pages: may this user (anonymous included) see the walls? Kiosk pages go through
    `kiosk_wall` instead."""
    return walls_public() or bool(user and user.is_authenticated and user.is_active)


# Tokens --------------------------------------------------------------------------------

def _hash(raw):
    return hashlib.sha256(raw.encode()).hexdigest()


def issue(repository, name, created_by=None):
    """A new token for `repository`'s wall (None: the wall of all repositories).
    Returns (token, raw key): the raw key is shown once and never stored."""
    raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = KioskToken.objects.create(repository=repository, name=name[:100],
                                      key_hash=_hash(raw), prefix=raw[:8], created_by=created_by)
    return token, raw


def lookup(raw):
    """The token with this raw key, revoked or not; None if there is none."""
    if not raw or not isinstance(raw, str) or not raw.startswith(TOKEN_PREFIX) or len(raw) > 100:
        return None
    return KioskToken.objects.select_related("repository").filter(key_hash=_hash(raw)).first()


def verify(raw):
    """The live (not revoked) token with this raw key, or None."""
    token = lookup(raw)
    return token if token is not None and token.revoked_at is None else None


def revoke(token):
    """Revoke a token and, once that is committed, close every screen using it."""
    updated = KioskToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(
        revoked_at=timezone.now())
    token.refresh_from_db(fields=["revoked_at"])
    if updated:
        name = token.repository.name if token.repository_id else None
        transaction.on_commit(lambda: send_to_walls(
            name, {"type": KIOSK_REVOKED, "token": token.pk}, only_that_wall=True))
    return bool(updated)


def revoked_among(token_ids):
    """Which of these token ids are revoked (or gone) now: one query, none for no ids."""
    if not token_ids:
        return set()
    live = set(KioskToken.objects.filter(pk__in=token_ids, revoked_at__isnull=True)
               .values_list("pk", flat=True))
    return set(token_ids) - live


def wall_path(token_raw):
    return f"/radiators/kiosk/{token_raw}/"


def socket_url(repository, kiosk_token=None):
    """The wall's socket path (repository None: all repositories), with the kiosk token."""
    path = f"/ws/radiators/{repository.name}/" if repository is not None else "/ws/radiators/"
    return f"{path}?kiosk={kiosk_token}" if kiosk_token else path


# Sockets -------------------------------------------------------------------------------

class Refused(Exception):
    def __init__(self, code, why):
        super().__init__(why)
        self.code = code


@dataclass(frozen=True)
class Viewer:
    """Who a socket belongs to: a user, a kiosk token, or an anonymous viewer."""

    user: object = None
    kiosk_token: KioskToken | None = None

    @property
    def kind(self):
        return "kiosk" if self.kiosk_token else "user" if self.user else "anonymous"

    def may_watch(self, repository):
        """`repository` None: the wall of all repositories."""
        if self.kiosk_token is None:
            return True
        wanted = repository.pk if repository is not None else None
        return self.kiosk_token.repository_id == wanted


def socket_viewer(scope):
    """Decide who a socket belongs to, or raise Refused(close code, why).

    A `kiosk` query parameter means a kiosk screen, whoever else the browser is signed in
    as; otherwise the session's user; otherwise an anonymous viewer when walls are public.
    Sync (it reads the database): call it from a thread.
    """
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    if "kiosk" in query:
        token = lookup(query["kiosk"][0])
        if token is None:
            raise Refused(CLOSE_UNAUTHORIZED, "unknown kiosk token")
        if token.revoked_at is not None:
            raise Refused(CLOSE_REVOKED, "this kiosk token was revoked")
        KioskToken.objects.filter(pk=token.pk).update(last_used_at=timezone.now())
        return Viewer(kiosk_token=token)
    user = scope.get("user")
    if user is not None and user.is_authenticated and user.is_active:
        return Viewer(user=user)
    if walls_public():
        return Viewer()
    raise Refused(CLOSE_UNAUTHORIZED, "sign in, or use a kiosk link")


def origin_allowed(scope):
    """The Origin header names this server: its host is the Host the socket was opened on
    and one of ALLOWED_HOSTS (Django's CSRF rule for same-origin), or it is listed in
    CSRF_TRUSTED_ORIGINS. No Origin (not a browser, or a privacy proxy): refused."""
    headers = dict(scope.get("headers", []))
    origin = headers.get(b"origin", b"").decode("latin-1")
    if not origin or origin == "null":
        return False
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return False
    if origin in getattr(settings, "CSRF_TRUSTED_ORIGINS", []):
        return True
    for trusted in getattr(settings, "CSRF_TRUSTED_ORIGINS", []):
        scheme, _, host = trusted.partition("://")
        if host.startswith("*.") and parts.scheme == scheme and (
                parts.netloc.endswith(host[1:])):
            return True
    host = headers.get(b"host", b"").decode("latin-1")
    allowed = list(settings.ALLOWED_HOSTS)
    if settings.DEBUG and not allowed:
        allowed = [".localhost", "127.0.0.1", "[::1]"]
    return parts.netloc.lower() == host.lower() and validate_host(
        split_domain_port(parts.netloc)[0], allowed)


class SameOriginGate:
    """ASGI middleware for the websocket routes: a socket whose Origin is not this
    server's (`origin_allowed`) is refused at the handshake, before any consumer runs
    (the browser sees a failed connection; HTTP 403)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "websocket" and not origin_allowed(scope):
            message = await receive()
            if message["type"] == "websocket.connect":
                await send({"type": "websocket.close", "code": CLOSE_BAD_ORIGIN})
            return None
        return await self.app(scope, receive, send)


# The kiosk page ----------------------------------------------------------------------------

@require_safe
@never_cache
def kiosk_wall(request, token):
    """A wall screen's page: the token's wall, read-only, with the token in the socket URL."""
    found = lookup(token)
    if found is None:
        raise Http404("no such kiosk link")
    if found.revoked_at is not None:
        return HttpResponse("This kiosk link was revoked. Ask for a new one.",
                            status=410, content_type="text/plain; charset=utf-8")
    KioskToken.objects.filter(pk=found.pk).update(last_used_at=timezone.now())
    from .views import render_wall

    # No login on a kiosk: whoever is signed in on this browser, the page is nobody's
    # (no name, no controls, no CSRF token in it).
    request.user = AnonymousUser()
    request.wall_socket_url = socket_url(found.repository, token)
    response = render_wall(request, found.repository, kiosk=True)
    # The token is in this page's URL: keep it out of Referer headers and search engines.
    response["Referrer-Policy"] = "no-referrer"
    response["X-Robots-Tag"] = "noindex, nofollow"
    return response

