"""Which branch node a build gets.

The branch's own node when it is usable (sticky), else the usable node changed least
recently (never-used first). The lock is a conditional UPDATE on the node row
(`held_by IS NULL`): of two builds racing for one node, exactly one update matches and
the other moves on to the next candidate. It holds on PostgreSQL and SQLite alike.
"""

from django.db import transaction
from django.db.models import F

from nodes.models import Node, NodeLease
from pipeline.services.events import record_event


def _candidates(build):
    sticky = (NodeLease.objects.filter(repository=build.repository_id, branch=build.branch)
              .values_list("node_id", flat=True).first())
    pool = (Node.objects.branch_pool().allocatable()
            .order_by(F("last_changed_at").asc(nulls_first=True), "pk")
            .values_list("pk", flat=True))
    ordered = [sticky] if sticky else []
    return ordered + [pk for pk in pool if pk != sticky]


def allocate_node(build):
    """Hold a branch node for `build` and remember the branch on it. None: all are busy."""
    held = Node.objects.filter(held_by=build).first()
    if held:
        return held  # a retried task: the build already has its node
    for node_id in _candidates(build):
        with transaction.atomic():
            won = (Node.objects.branch_pool().allocatable().filter(pk=node_id)
                   .update(held_by=build))
            if not won:
                continue  # another build got there first
            NodeLease.objects.filter(repository=build.repository_id, branch=build.branch).exclude(
                node_id=node_id).delete()
            NodeLease.objects.update_or_create(
                node_id=node_id, defaults={"repository_id": build.repository_id,
                                           "branch": build.branch})
            node = Node.objects.get(pk=node_id)
            record_event("node.allocated", subject=node, data={"branch": build.branch,
                                                                "build": build.pk},
                         message=f"{node.name} serves {build.branch} for build #{build.pk}")
            return node
    return None


def release_node(build):
    """The build is over: the node stays leased to its branch (sticky) but is free to use."""
    return Node.objects.filter(held_by=build).update(held_by=None)


def forget_branch(repository, branch, reason):
    """A merged, closed or deleted branch gives its node back to the pool."""
    lease = NodeLease.objects.select_related("node").filter(repository=repository,
                                                            branch=branch).first()
    if lease is None:
        return None
    node = lease.node
    lease.delete()
    record_event("node.freed", subject=node, data={"branch": branch},
                 message=f"{node.name} no longer serves {branch}: {reason}")
    return node


def mark_unhealthy(node, message):
    """A node that failed under a deploy leaves the pool until a health check passes."""
    from nodes.services.health import record_health

    record_health(node, Node.Health.UNHEALTHY, message)
    lease = NodeLease.objects.filter(node=node).first()
    if lease:
        forget_branch(lease.repository, lease.branch, "the node is unhealthy")


def has_branch_pool():
    return Node.objects.branch_pool().filter(enabled=True).exists()
