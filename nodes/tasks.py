from celery import shared_task

from nodes.services import health


@shared_task(time_limit=300)
def check_node_health():
    health.check_all_nodes()


@shared_task(time_limit=60)
def check_one_node(node_id):
    """One node, now (added, re-pinned or enabled). Harmless twice: a check only records."""
    health.check_node_by_id(node_id)
