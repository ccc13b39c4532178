"""Admin operations on the pool: flags that take nodes in and out of use, host keys."""

from django.core import signing

from nodes.models import Node
from pipeline.services.events import record_event

FLAG_ACTIONS = {
    "enable": ("enabled", True),
    "disable": ("enabled", False),
    "drain": ("draining", True),
    "undrain": ("draining", False),
    "mark_off_cycle": ("off_cycle", True),
    "clear_off_cycle": ("off_cycle", False),
}
HOST_KEY_SALT = "nodes.host-key-confirmation"


def set_flag(nodes, action, *, user=None):
    """Apply an admin action to nodes; one Event per node that actually changed."""
    field, value = FLAG_ACTIONS[action]
    changed = 0
    for node in nodes:
        if Node.objects.filter(pk=node.pk).exclude(**{field: value}).update(**{field: value}):
            changed += 1
            record_event(f"node.{action}", subject=node, old=str(not value), new=str(value),
                         actor=user, message=f"{node.name}: {action.replace('_', ' ')}")
    return changed


def offer_host_key(node):
    """Read the key the node offers now: (key line, fingerprint, signed token to pin it)."""
    from nodes.transports.ssh import fetch_host_key

    line, fingerprint = fetch_host_key(node.host, node.ssh_port)
    token = signing.dumps({"node": node.pk, "key": line}, salt=HOST_KEY_SALT)
    return line, fingerprint, token


def pin_host_key(node, token, *, user=None, max_age=600):
    """Pin exactly the key a person was shown (the token is signed and expires)."""
    data = signing.loads(token, salt=HOST_KEY_SALT, max_age=max_age)
    if data["node"] != node.pk:
        raise signing.BadSignature("this confirmation is for another node")
    old = node.host_key
    Node.objects.filter(pk=node.pk).update(host_key=data["key"])
    node.host_key = data["key"]
    record_event("node.host_key", subject=node, actor=user,
                 message=f"{node.name}: host key pinned" + (" (replaced)" if old else ""))
    return data["key"]


def ensure_local_pool(base_dir, count=10, first_port=9101):
    """The standalone pool: local nodes under `base_dir`, each with its own app port."""
    nodes = []
    for index in range(1, count + 1):
        node, _ = Node.objects.get_or_create(
            name=f"branch-{index:02d}",
            defaults={"environment": Node.Environment.BRANCH, "transport": Node.Transport.LOCAL,
                      "host": "127.0.0.1", "app_port": first_port + index - 1, "user": "",
                      "base_path": str(base_dir / f"branch-{index:02d}")})
        nodes.append(node)
    return nodes
