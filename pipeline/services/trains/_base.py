"""What every part of the train shares: its error, statuses, the authors it asks."""

import re

from django.contrib.auth import get_user_model

from pipeline.models import DeployTrain, TrainCommit

T = DeployTrain.Status
PRODUCTION = "production"
# "This reverts commit <sha>." is what `git revert` writes.
REVERTS = re.compile(r"This reverts commit ([0-9a-f]{40})")

class TrainError(ValueError):
    """The request is refused; the message says why, for the person asking."""

def _production_nodes(repository):
    from nodes.models import Node

    return Node.objects.usable_by(repository).filter(environment=Node.Environment.PRODUCTION,
                                                     enabled=True)

def train_authors(train):
    """The users whose changes the train carries (merge commits and unmapped authors
    excluded), in the order their first commit appears."""
    User = get_user_model()
    ids = []
    for user_id in (TrainCommit.objects.filter(train=train, author__isnull=False)
                    .order_by("position").values_list("author_id", flat=True)):
        if user_id not in ids:
            ids.append(user_id)
    users = User.objects.in_bulk(ids)
    return [users[pk] for pk in ids if pk in users]

def is_release_manager(user):
    from pipeline.permissions import can

    return can(user, "force")
