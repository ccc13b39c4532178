"""First-run setup for the standalone mode: an admin account, its API token, the demo."""

import secrets
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model

from pipeline.models import ApiToken, Repository

ADMIN_USERNAME = "admin"


def _write_private(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(text)


def credentials_path():
    return Path(settings.VAR_DIR) / "admin-credentials.txt"


def token_path():
    return Path(settings.VAR_DIR) / "api-token"


def ensure_admin():
    """Create the admin once. Returns the new password, or None if it already existed."""
    User = get_user_model()
    if User.objects.filter(username=ADMIN_USERNAME).exists():
        return None
    password = secrets.token_urlsafe(12)
    User.objects.create_superuser(ADMIN_USERNAME, "admin@localhost", password)
    _write_private(credentials_path(), f"username: {ADMIN_USERNAME}\npassword: {password}\n")
    return password


def ensure_cli_token():
    """The token `manage.py bb` uses against the local server, kept in var/api-token."""
    path = token_path()
    if path.exists() and ApiToken.objects.filter(key_hash=ApiToken.hash(path.read_text().strip())):
        return path
    admin = get_user_model().objects.get(username=ADMIN_USERNAME)
    _, raw = ApiToken.issue(admin, "standalone command line")
    _write_private(path, raw + "\n")
    return path


def seed_demo():
    """The demo app as a real git repository under var/, registered as `demo`."""
    from pipeline.demo import create_demo_repository

    path = create_demo_repository(Path(settings.VAR_DIR) / "demo-repo")
    repository, _ = Repository.objects.update_or_create(
        name="demo", defaults={"clone_url": str(path), "default_branch": "master"}
    )
    return repository


def seed_local_nodes(count=10):
    """Ten local branch nodes under var/nodes/, the demo app on ports 9101-9110."""
    from nodes.services.pool import ensure_local_pool

    base = Path(settings.TRAINYARD["NODE_BASE_DIR"])
    return ensure_local_pool(base, count=count,
                             first_port=int(settings.TRAINYARD["NODE_FIRST_PORT"]))


def stop_local_apps():
    """When the standalone server stops, the `run:` apps it started on local nodes stop
    too (TERM, then KILL): on this machine nothing else would, and an app left running
    holds its node's port against the next run's deploys. Returns the nodes stopped."""
    import logging

    from nodes.deploy import stop_app
    from nodes.models import Node
    from nodes.services.connections import get_transport

    stopped = []
    for node in Node.objects.filter(transport=Node.Transport.LOCAL):
        try:
            with get_transport(node) as transport:
                stop_app(transport, node.base_path)
            stopped.append(node.name)
        except Exception:  # one node's trouble must not keep the others running
            logging.getLogger(__name__).warning("could not stop the app on %s", node.name,
                                                exc_info=True)
    return stopped
