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
    "lgtm": "pipeline.add_lgtm",
    # Merging is gated by the rules themselves (green build, LGTMs): whoever may close a
    # pull request may merge one that meets them.
    "merge": "pipeline.change_pullrequest",
    # Record an action in another user's name (`--as USER`): superusers, or a grant.
    "act_for_others": "pipeline.act_for_others",
    "add_repository": "pipeline.add_repository",
    "remove_repository": "pipeline.delete_repository",
    "view_nodes": "nodes.view_node",
    "add_node": "nodes.add_node",
    "change_node": "nodes.change_node",  # enable, disable, drain, undrain, pin a host key
    "remove_node": "nodes.delete_node",
    # Deploy trains. Starting one outside its schedule, forcing it past the approvals,
    # rolling production back and locking environments are a release manager's.
    "start_train": "pipeline.release_manager",
    "force": "pipeline.release_manager",
    "rollback": "pipeline.release_manager",
    "lock": "pipeline.release_manager",
}

# Actions any logged-in, active user may try: the service knows who may really do them
# (`approve`: only a train's authors, or a release manager, may answer it).
LOGGED_IN_ACTIONS = {"approve"}


def can(user, action):
    if action not in ACTIONS and action not in LOGGED_IN_ACTIONS:
        raise ValueError(f"unknown action {action!r}")
    if not (user and user.is_authenticated and user.is_active):
        return False
    return action in LOGGED_IN_ACTIONS or user.has_perm(ACTIONS[action])


def require(user, action):
    if not can(user, action):
        who = user.get_username() if user and user.is_authenticated else "anonymous"
        raise PermissionDenied(f"{who} may not {action}")


def acting_user(user, as_user):
    """Who an action is recorded for: `user` itself, or `as_user` when `user` may act for
    others. Raises PermissionDenied otherwise."""
    if as_user is None or as_user == user:
        return user
    if not can(user, "act_for_others"):
        raise PermissionDenied(f"{user.get_username()} may not act for another user "
                               "(it needs the act_for_others permission)")
    return as_user
