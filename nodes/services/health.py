"""Node health: reachable through its transport (else unhealthy), then its app's health
URL if one is deployed (else degraded).

`check_soon(node)` checks one node as soon as the caller's transaction commits (a Celery
task): for a node just added, re-pinned or enabled, so it does not wait for the next 30 s
round. A node that stops being unhealthy gives waiting deploys another try at once.
"""

import time
import urllib.error
import urllib.request

from django.db import transaction
from django.utils import timezone

from nodes.models import Node
from nodes.services.connections import get_transport
from nodes.transports import TransportError
from pipeline.services.events import record_event

PROBE_TIMEOUT = 10


def record_health(node, health, message="", latency_ms=None):
    """Store a check's result; an Event only when health changes."""
    with transaction.atomic():
        old = (Node.objects.select_for_update(no_key=True).filter(pk=node.pk)
               .values_list("health", flat=True).first())
        Node.objects.filter(pk=node.pk).update(
            health=health, health_message=message[:500], health_latency_ms=latency_ms,
            last_health_check=timezone.now())
        node.health, node.health_message = health, message[:500]
        if old != health:
            record_event("node.health", subject=node, old=old or "", new=health, message=message)
        if old == Node.Health.UNHEALTHY and health != Node.Health.UNHEALTHY:
            from pipeline.services.builds import dispatch_waiting_deploys

            transaction.on_commit(dispatch_waiting_deploys, robust=True)
    return health


def check_soon(node):
    """Check `node` once the caller's transaction commits, on a worker (SSH may take
    seconds: never in a web request). Call it after adding, re-pinning or enabling a node."""
    from nodes.tasks import check_one_node

    node_id = node.pk
    transaction.on_commit(lambda: check_one_node.delay(node_id), robust=True)


def _probe_url(url):
    try:
        with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT) as response:  # noqa: S310
            return response.status < 400, f"{url} answered {response.status}"
    except urllib.error.HTTPError as exc:
        return False, f"{url} answered {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return False, f"{url} did not answer: {getattr(exc, 'reason', exc)}"


def check_node(node):
    """Reachability, then the app (when one is deployed and has a health URL)."""
    started = time.monotonic()
    try:
        with get_transport(node) as transport:
            result = transport.run(["true"], timeout=PROBE_TIMEOUT)
        if not result.ok:
            return record_health(node, Node.Health.UNHEALTHY, f"`true` {result.describe()}")
    except TransportError as exc:
        return record_health(node, Node.Health.UNHEALTHY, str(exc))
    message = f"reachable via {node.transport}"
    if node.current_sha and node.health_url:
        healthy, message = _probe_url(node.health_url)
        if not healthy:
            return record_health(node, Node.Health.DEGRADED, message)
    latency = int((time.monotonic() - started) * 1000)
    return record_health(node, Node.Health.HEALTHY, message, latency)


def check_node_by_id(node_id):
    """Check one node now; if it is usable, waiting deploys get another try (it may be the
    node they wait for). A node removed meanwhile, or disabled, is not checked."""
    node = Node.objects.filter(pk=node_id, enabled=True).first()
    if node is None:
        return None
    health = check_node(node)
    if health != Node.Health.UNHEALTHY:
        from pipeline.services.builds import dispatch_waiting_deploys

        dispatch_waiting_deploys()
    return health


def check_all_nodes():
    return {node.name: check_node(node) for node in Node.objects.filter(enabled=True)}
