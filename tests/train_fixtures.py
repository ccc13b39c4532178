"""Fixtures of deploy-train tests (tests/conftest.py loads this module as a plugin):
the people of a train, and a real train waiting for its authors."""

import pytest

from pipeline.models import DeployTrain
from pipeline.services import trains
from tests.factories import UserFactory
from tests.helpers import off_main_thread
from tests.trainworld import BOB, CAROL, make_world, wait_for_train


@pytest.fixture
def people(transactional_db):
    return (UserFactory(username="alice", email="alice@example.com"),
            UserFactory(username="bob", email="bob@example.com"),
            UserFactory(username="rm", email="rm@example.com", perms=["pipeline.release_manager"]))


@pytest.fixture
def waiting_train(worker, people, tmp_path):
    """A train of alice's, bob's and an unmapped contractor's commits that passed staging,
    preview and pre-prod and waits for its authors."""
    world = make_world(tmp_path, environments=("staging", "preview", "preprod"))
    world.commit({"bye.txt": "bye\n"}, "Say goodbye on the way out", author=BOB)
    world.commit({"footer.txt": "footer\n"}, "Fix the footer on small screens", author=CAROL)
    world.green()
    train = off_main_thread(trains.start_train, world.repository, via="test")
    wait_for_train(train, DeployTrain.Status.AWAITING_APPROVAL, DeployTrain.Status.FAILED,
                   timeout=180)
    assert train.status == DeployTrain.Status.AWAITING_APPROVAL, train.message
    yield train
    world.stop_apps()
