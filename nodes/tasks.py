from celery import shared_task

from nodes.services import health


@shared_task(time_limit=300)
def check_node_health():
    health.check_all_nodes()
