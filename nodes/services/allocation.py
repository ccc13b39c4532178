"""Which branch node a build gets.

The branch's own node when it is usable (sticky), else the usable node changed least
recently (never-used first). Two locks, both held until the allocation commits:

- the build's row (`SELECT ... FOR NO KEY UPDATE`, the row `end_build` moves): copies of
  one build's task take turns, so the second finds the node the first took, and a build
  that ended (its node already given back) never takes another one;
- a conditional UPDATE on the node row (`held_by IS NULL`): of two builds racing for one
  node, exactly one update matches and the other moves on to the next candidate.

On SQLite the row lock is a no-op, but transactions are IMMEDIATE (settings): a writer
holds the whole database until it commits, which serialises the same steps. Should either
lock ever miss, `held_by` is unique: the losing copy gets the node its build holds.
"""

from django.db import IntegrityError, transaction
from django.db.models import F

from nodes.models import Node, NodeLease
from pipeline.models import Build
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
    """Hold a branch node for `build` and remember the branch on it. None: all are busy, or
    the build has ended. A build never holds two nodes: a second call returns the first's."""
    with transaction.atomic():
        active = (Build.objects.select_for_update(no_key=True)
                  .filter(pk=build.pk, status__in=Build.ACTIVE).values_list("pk", flat=True))
        if not list(active):
            return None
        held = Node.objects.filter(held_by=build.pk).first()
        if held:
            return held  # a retried task: the build already has its node
        for node_id in _candidates(build):
            try:
                with transaction.atomic():
                    won = _hold(build, node_id)
            except IntegrityError:
                # Another copy of this build holds a node (or another build of the branch
                # leased one): the build's node if it has one, else the next candidate.
                won = Node.objects.filter(held_by=build.pk).first()
            if won:
                return won
    return None


def _hold(build, node_id):
    won = (Node.objects.branch_pool().allocatable().filter(pk=node_id)
           .update(held_by=build.pk))
    if not won:
        return None  # another build got there first
    NodeLease.objects.filter(repository=build.repository_id, branch=build.branch).exclude(
        node_id=node_id).delete()
    NodeLease.objects.update_or_create(
        node_id=node_id, defaults={"repository_id": build.repository_id, "branch": build.branch})
    node = Node.objects.get(pk=node_id)
    record_event("node.allocated", subject=node, data={"branch": build.branch, "build": build.pk},
                 message=f"{node.name} serves {build.branch} for build #{build.pk}")
    return node


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
