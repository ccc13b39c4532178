"""First-run setup for the standalone mode: an admin account, its API token, the demo
(its repository, two teammates and local nodes for branches and every environment)."""

import secrets
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.db import transaction

from pipeline.models import ApiToken, Repository

ADMIN_USERNAME = "admin"
# The demo's two authors: their e-mails are the demo repository's commit authors', so a
# train maps its commits to them.
TEAM = {"alice": "alice@example.com", "bob": "bob@example.com"}
# What a team member does (build, open, close and merge pull requests, LGTM), and no more:
# the admin (a superuser) is the demo's release manager.
TEAM_PERMISSIONS = ("pipeline.add_build", "pipeline.add_pullrequest",
                    "pipeline.change_pullrequest", "pipeline.add_lgtm")
# The environment nodes' app ports start this far after the branch nodes' first one.
ENVIRONMENT_PORT_OFFSET = 100


def _write_private(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(text)


def credentials_path(username=ADMIN_USERNAME):
    return Path(settings.VAR_DIR) / f"{username}-credentials.txt"


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


def ensure_team():
    """alice and bob, each created once: {username: new password, or None if they existed}.
    Their permissions are granted again at every start, so a demo made by an older version
    gets what a team member needs now."""
    return {username: ensure_team_member(username, email) for username, email in TEAM.items()}


def ensure_team_member(username, email):
    User = get_user_model()
    permissions = [Permission.objects.get(content_type__app_label=app, codename=codename)
                   for app, codename in (name.split(".") for name in TEAM_PERMISSIONS)]
    password = None
    with transaction.atomic():
        user, created = User.objects.get_or_create(username=username, defaults={"email": email})
        if created:
            password = secrets.token_urlsafe(12)
            user.set_password(password)
            user.save(update_fields=["password"])
            # Inside the transaction: a password that could not be kept leaves no user.
            _write_private(credentials_path(username),
                           f"username: {username}\npassword: {password}\n")
        user.user_permissions.add(*permissions)
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

    if count > ENVIRONMENT_PORT_OFFSET:
        raise ValueError(f"at most {ENVIRONMENT_PORT_OFFSET} local branch nodes: the "
                         "environment nodes' ports come after theirs")
    base = Path(settings.TRAINYARD["NODE_BASE_DIR"])
    return ensure_local_pool(base, count=count,
                             first_port=int(settings.TRAINYARD["NODE_FIRST_PORT"]))


def seed_environment_nodes(repository):
    """The train's local nodes under var/nodes/, reserved for `repository`: staging,
    preview, pre-prod and three production nodes (the first off-cycle), the demo app on
    ports 9201-9206 (NODE_FIRST_PORT + 100 on)."""
    from nodes.services.pool import ensure_local_environments

    first_port = int(settings.TRAINYARD["NODE_FIRST_PORT"]) + ENVIRONMENT_PORT_OFFSET
    return ensure_local_environments(Path(settings.TRAINYARD["NODE_BASE_DIR"]), repository,
                                     first_port=first_port)


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
