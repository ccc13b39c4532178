"""Operations on the pool, for the admin, the API and the command line: registering and
removing nodes, flags that take nodes in and out of use, host keys.

The rules live here, so every door refuses the same things with the same sentence (a
NodeError). A node added, re-enabled or re-pinned is health-checked as soon as the change
commits: its health then says at once whether it can be used, and why not.
"""

import posixpath
import re
from functools import partial

from django.core import signing
from django.db import IntegrityError, transaction

from nodes.models import Node
from pipeline.services.events import record_event

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}")
USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,99}")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_UNSAFE = re.compile(r"[\x00-\x20\x7f]")
LOCAL_MACHINE = "this worker host"  # every local node lives on the host that deploys to it


class NodeError(ValueError):
    pass


class HostKeyMismatch(NodeError):
    """The key the node offers is not the one the person compared: nothing was pinned."""

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
    from nodes.transports import TransportError
    from nodes.transports.ssh import fetch_host_key

    if node.transport != Node.Transport.SSH:
        raise TransportError(f"{node.name} uses the {node.transport} transport: it has no host "
                             "key to pin")
    line, fingerprint = fetch_host_key(node.host, node.ssh_port)
    token = signing.dumps({"node": node.pk, "key": line}, salt=HOST_KEY_SALT)
    return line, fingerprint, token


def pin_host_key(node, token, *, fingerprint=None, user=None, max_age=600):
    """Pin exactly the key a person was shown (the token is signed and expires).

    With `fingerprint` (what the person compared with the node's own `ssh-keygen -lf`),
    the key is pinned only if it has that fingerprint; HostKeyMismatch otherwise. The node
    is health-checked once the key is pinned.
    """
    expected = normalise_fingerprint(fingerprint) if fingerprint is not None else None
    data = signing.loads(token, salt=HOST_KEY_SALT, max_age=max_age)
    if data["node"] != node.pk:
        raise signing.BadSignature("this confirmation is for another node")
    offered = fingerprint_of(data["key"])
    if expected is not None and offered != expected:
        raise HostKeyMismatch(f"not pinned: {node.name} offers {offered}, not {expected}. Compare "
                              "again with `ssh-keygen -lf` on the node itself: a different key can "
                              "mean someone is between Trainyard and the node")
    with transaction.atomic():
        old = node.host_key
        Node.objects.filter(pk=node.pk).update(host_key=data["key"])
        node.host_key = data["key"]
        record_event("node.host_key", subject=node, actor=user,
                     message=f"{node.name}: host key {offered} pinned" + (" (replaced)" if old else ""))
        _check_after_commit(node)
    return data["key"]


def ensure_local_pool(base_dir, count=10, first_port=9101):
    """The standalone pool: local nodes under `base_dir`, each with its own app port."""
    return [_ensure_local_node(base_dir, f"branch-{index:02d}", first_port + index - 1,
                               environment=Node.Environment.BRANCH)
            for index in range(1, count + 1)]


# The standalone train's nodes, in port order: name -> (environment, off-cycle).
LOCAL_ENVIRONMENT_NODES = {
    "staging-1": (Node.Environment.STAGING, False),
    "preview-1": (Node.Environment.PREVIEW, False),
    "preprod-1": (Node.Environment.PREPROD, False),
    "production-1": (Node.Environment.PRODUCTION, True),  # the production rollout's first
    "production-2": (Node.Environment.PRODUCTION, False),
    "production-3": (Node.Environment.PRODUCTION, False),
}


def ensure_local_environments(base_dir, repository, first_port):
    """The standalone train's nodes under `base_dir`, reserved for `repository`: one each
    for staging, preview and pre-prod, and three for production, the first off-cycle; app
    ports from `first_port` on. Like ensure_local_pool, a node that exists by its name is
    left as the admin may have changed it."""
    return [_ensure_local_node(base_dir, name, first_port + offset, environment=environment,
                               off_cycle=off_cycle, repository=repository)
            for offset, (name, (environment, off_cycle))
            in enumerate(LOCAL_ENVIRONMENT_NODES.items())]


def _ensure_local_node(base_dir, name, app_port, **fields):
    node, _ = Node.objects.get_or_create(
        name=name, defaults={"transport": Node.Transport.LOCAL, "host": "127.0.0.1",
                             "app_port": app_port, "user": "", "base_path": str(base_dir / name),
                             **fields})
    return node


# Registration ---------------------------------------------------------------------------

def known_nodes(limit=20):
    """'known: branch-01, app-1' (the first `limit`), or a hint when there are none."""
    names = list(Node.objects.values_list("name", flat=True)[:limit + 1])
    if not names:
        return "there are none yet (manage.py node add NAME …)"
    return "known: " + ", ".join(names[:limit]) + (", …" if len(names) > limit else "")


def get_node(name):
    node = Node.objects.filter(name=name).first() if isinstance(name, str) else None
    if node is None:
        raise NodeError(f"no node named {name!r}; {known_nodes()}")
    return node


def add_node(*, name, base_path, app_port, transport=Node.Transport.SSH, host="127.0.0.1",
             ssh_port=22, user=None, environment=Node.Environment.BRANCH, repository=None,
             env=None, actor=None):
    """Register a node; NodeError says what is wrong. `repository` is a repository name
    (the node is reserved for it) or None (the shared pool). Health-checked after commit."""
    fields = _validated_fields(name=name, base_path=base_path, app_port=app_port,
                               transport=transport, host=host, ssh_port=ssh_port, user=user,
                               environment=environment, env=env)
    fields["repository"] = _repository(repository)
    _refuse_clashes(fields)
    pool = f"reserved for {repository}" if repository else "shared pool"
    try:
        with transaction.atomic():
            node = Node.objects.create(**fields)
            record_event("node.added", subject=node, actor=actor,
                         message=f"{node.name} added ({node.transport}, {pool})")
            _check_after_commit(node)
    except IntegrityError as exc:
        raise NodeError(f"a node named {name!r} exists already") from exc
    node.refresh_from_db()
    return node


def change_node(node, action, *, actor=None):
    """enable, disable, drain, undrain (the admin's actions). True if the node changed.
    A node enabled again is checked at once: its health is as old as when it was disabled."""
    if action not in ("enable", "disable", "drain", "undrain"):
        raise NodeError(f"unknown action {action!r}; use enable, disable, drain or undrain")
    with transaction.atomic():
        changed = bool(set_flag([node], action, user=actor))
        if changed and action == "enable":
            _check_after_commit(node)
    node.refresh_from_db()
    return changed


def remove_node(node, *, actor=None):
    """Remove a node and its deploy history. Refused while a build holds it."""
    with transaction.atomic():
        held = Node.objects.filter(pk=node.pk).values_list("held_by", flat=True).first()
        if held:
            raise NodeError(f"{node.name} is in use by build #{held}: drain it (no new build gets "
                            "it), wait for that build to end, then remove it")
        name = node.name
        node.delete()
        # No subject: the node's own events went with it; this one stays in the log.
        record_event("node.removed", actor=actor, message=f"{name} removed")
    return name


def _check_after_commit(node):
    """Registration through the API or the command line checks the node in the request,
    once committed, so the answer can say how it is; a usable node also gives waiting
    deploys another try (`check_node_by_id`)."""
    from nodes.services.health import check_node_by_id

    transaction.on_commit(partial(check_node_by_id, node.pk), robust=True)


def _repository(name):
    if name in (None, ""):
        return None
    from pipeline.services.repositories import RepositoryError, get_repository

    try:
        return get_repository(name)
    except RepositoryError as exc:
        raise NodeError(str(exc)) from exc


def _validated_fields(*, name, base_path, app_port, transport, host, ssh_port, user,
                      environment, env):
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise NodeError(f"{name!r} is not a usable node name: use letters, digits, '-' and '_', "
                        "starting with a letter or digit, at most 100")
    _choice(transport, Node.Transport.values, "transport")
    _choice(environment, Node.Environment.values, "environment")
    if not isinstance(host, str) or not host or len(host) > 255 or host.startswith("-") \
            or _UNSAFE.search(host):
        raise NodeError(f"{host!r} is not a host name or address")
    if transport == Node.Transport.SSH:
        user = "deploy" if user in (None, "") else user
        if not isinstance(user, str) or not USER.fullmatch(user):
            raise NodeError(f"{user!r} is not a user name to log in as")
    else:
        user = ""  # a local node runs as Trainyard's own user
    return {"name": name, "transport": transport, "environment": environment, "host": host,
            "ssh_port": _port(ssh_port, "SSH port"), "app_port": _port(app_port, "app port"),
            "user": user, "base_path": _base_path(base_path), "env": _env(env)}


def _choice(value, allowed, what):
    if value not in allowed:
        raise NodeError(f"unknown {what} {value!r}; use {' or '.join(allowed)}")


def _port(value, what):
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise NodeError(f"the {what} must be a number from 1 to 65535, not {value!r}")
    return value


def _base_path(path):
    if not isinstance(path, str) or not path.startswith("/") or _UNSAFE.search(path) \
            or len(path) > 500:
        raise NodeError(f"the base path must be an absolute path on the node (releases/, current "
                        f"and shared/ go there), not {path!r}")
    path = posixpath.normpath(path)
    if path in ("/", "//"):
        raise NodeError("the base path cannot be / itself: give the node a folder of its own")
    return path


def _env(env):
    env = env or {}
    if not isinstance(env, dict) or not all(
            isinstance(k, str) and ENV_NAME.fullmatch(k) and isinstance(v, str) and "\x00" not in v
            for k, v in env.items()):
        raise NodeError("env must map variable names (letters, digits, _) to text values")
    return env


def _machine(transport, host):
    return LOCAL_MACHINE if transport == Node.Transport.LOCAL else host.lower()


def _refuse_clashes(fields):
    """Two nodes on one machine must not share a folder (one's deploy would replace the
    other's `current`) or, on one address, an app port (one's app would answer for both)."""
    machine = _machine(fields["transport"], fields["host"])
    path = fields["base_path"]
    for other in Node.objects.only("name", "transport", "host", "base_path", "app_port"):
        if _machine(other.transport, other.host) == machine:
            theirs = posixpath.normpath(other.base_path)
            if theirs == path or path.startswith(theirs + "/") or theirs.startswith(path + "/"):
                raise NodeError(f"base path {path} overlaps node {other.name}'s ({theirs}) on "
                                f"{machine}: every node on a host needs a folder of its own")
        if other.host.lower() == fields["host"].lower() and other.app_port == fields["app_port"]:
            raise NodeError(f"app port {fields['app_port']} on {fields['host']} is node "
                            f"{other.name}'s already: every node on a host needs its own port")


# Host keys ------------------------------------------------------------------------------

def fingerprint_of(line):
    """The SHA256 fingerprint of a public key line, as `ssh-keygen -lf` prints it."""
    from nodes.transports.ssh.hostkeys import parse_host_key

    return parse_host_key(line).fingerprint


def pinned_fingerprint(node):
    if not node.host_key:
        return None
    from nodes.transports import TransportError

    try:
        return fingerprint_of(node.host_key)
    except TransportError:
        return None


def normalise_fingerprint(text):
    text = text.strip() if isinstance(text, str) else ""
    if not text.startswith("SHA256:") or len(text) < 20:
        raise NodeError("give the key's SHA256 fingerprint as `ssh-keygen -lf` prints it on the "
                        "node (SHA256:…)")
    return text.rstrip("=")  # base64 padding: OpenSSH leaves it out
