"""Who may do what: the one place permissions are checked.

Every door (web buttons, the API, the command line through the API, chat commands)
asks `require(user, action)` before calling a service.
"""

from django.core.exceptions import PermissionDenied

# action -> the Django permission that grants it.
ACTIONS = {
    "build": "pipeline.add_build",
    "open_pull_request": "pipeline.add_pullrequest",
    "close_pull_request": "pipeline.change_pullrequest",
    "add_repository": "pipeline.add_repository",
    "remove_repository": "pipeline.delete_repository",
    "view_nodes": "nodes.view_node",
    "add_node": "nodes.add_node",
    "change_node": "nodes.change_node",  # enable, disable, drain, undrain, pin a host key
    "remove_node": "nodes.delete_node",
}


def can(user, action):
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}")
    return bool(user and user.is_authenticated and user.is_active and user.has_perm(ACTIONS[action]))


def require(user, action):
    if not can(user, action):
        who = user.get_username() if user and user.is_authenticated else "anonymous"
        raise PermissionDenied(f"{who} may not {action}")
