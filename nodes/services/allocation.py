"""Which branch node a build gets, and why none when there is none.

A build may use the shared nodes and those reserved for its repository, never another
repository's. Of those: the branch's own node when it is usable (sticky), else the
repository's reserved nodes, then the shared ones, each changed least recently first
(never-used first). Two locks, both held until the allocation commits:

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
from django.utils.text import Truncator

from nodes.models import Node, NodeLease
from pipeline.models import Build
from pipeline.services.events import record_event


def _usable(build):
    return Node.objects.branch_pool().usable_by(build.repository_id)


def _candidates(build):
    sticky = (NodeLease.objects.filter(repository=build.repository_id, branch=build.branch,
                                       node__in=_usable(build))
              .values_list("node_id", flat=True).first())
    # Only this repository's nodes and shared ones (NULL) are here: its own sort first.
    pool = (_usable(build).allocatable()
            .order_by(F("repository").asc(nulls_last=True),
                      F("last_changed_at").asc(nulls_first=True), "pk")
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
    won = _usable(build).allocatable().filter(pk=node_id).update(held_by=build.pk)
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


def has_branch_pool(repository):
    """Whether any enabled branch node could ever serve `repository` (a Repository or its
    pk). Without one a branch build skips its deploy; with one, busy or unhealthy, the
    deploy waits for it and says why (`why_no_node`)."""
    return Node.objects.branch_pool().usable_by(repository).filter(enabled=True).exists()


MESSAGE_CHARS = 200
SHOWN = 3


def why_no_node(build):
    """Why `build` got no node, from the nodes its repository could use, as one sentence:
    "no usable branch node for app: 3 unhealthy: TRAINYARD_SSH_KEY_FILE is not set: …, 2
    busy (builds #12, #14), 1 disabled"."""
    nodes = list(_usable(build).order_by("name"))
    prefix = f"no usable branch node for {build.repository.name}"
    if not nodes:
        return f"{prefix}: no branch node is shared or reserved for it"
    groups = {"unhealthy": [], "busy": [], "draining": [], "disabled": [], "free now": []}
    for node in nodes:
        if not node.enabled:
            groups["disabled"].append(node)
        elif node.draining:
            groups["draining"].append(node)
        elif node.health == Node.Health.UNHEALTHY:
            groups["unhealthy"].append(node)
        elif node.held_by_id:
            groups["busy"].append(node)
        else:
            groups["free now"].append(node)  # freed since the allocation looked
    parts = [f"{len(group)} {name}" for name, group in groups.items() if group]
    if groups["unhealthy"]:
        parts[0] += _unhealthy_detail(groups["unhealthy"])
    if groups["busy"]:
        parts[bool(groups["unhealthy"])] += _busy_detail(groups["busy"])
    return f"{prefix}: {', '.join(parts)}"


def _unhealthy_detail(nodes):
    by_message = {}
    for node in nodes:
        message = Truncator(node.health_message or "no reason recorded").chars(MESSAGE_CHARS)
        by_message.setdefault(message, []).append(node.name)
    if len(by_message) == 1:
        return f": {next(iter(by_message))}"
    shown = [f"{', '.join(names)}: {message}" for message, names in by_message.items()]
    more = ["…"] if len(shown) > SHOWN else []
    return f" ({'; '.join(shown[:SHOWN] + more)})"


def _busy_detail(nodes):
    ids = sorted(node.held_by_id for node in nodes)
    shown = ", ".join(f"#{pk}" for pk in ids[:SHOWN + 2]) + (", …" if len(ids) > SHOWN + 2 else "")
    return f" ({'builds' if len(ids) > 1 else 'build'} {shown})"
