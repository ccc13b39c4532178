"""Rows locked to change their status must not block rows that reference them.

Found in CI: cancelling a train (its row locked FOR UPDATE, then its queued jobs) while a
worker claimed one of those jobs (the job's row locked by the claim's UPDATE, then an Event
referencing the train inserted, whose foreign key check takes KEY SHARE on the train's
row): each waited for the other, and PostgreSQL ended one with "deadlock detected".
A status is not a key: the services lock FOR NO KEY UPDATE, which still serializes every
mover but lets references in."""

import threading

import pytest
from django.db import connection, connections, transaction

from pipeline.models import Build, DeployTrain, Event
from pipeline.statemachine import transition
from tests.factories import BuildFactory, CommitFactory, RepositoryFactory, UserFactory
from tests.helpers import require

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]


def insert_referencing(model_field, pk, outcome):
    """In another connection: insert an Event referencing the row, giving up after 2 s."""
    try:
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL lock_timeout = '2s'")
            Event.objects.create(kind="test.reference", **{model_field: pk})
        outcome.append("inserted")
    except Exception as exc:  # noqa: BLE001 (the outcome is what the test looks at)
        outcome.append(repr(exc))
    finally:
        connections.close_all()


def test_cancelling_a_train_lets_a_worker_record_what_it_did_meanwhile(monkeypatch):
    require(connection.vendor == "postgresql", "PostgreSQL (DATABASE_URL=postgres://...)")
    from pipeline.services.trains import _answers

    repository = RepositoryFactory(name="locks")
    train = DeployTrain.objects.create(repository=repository, head_sha="a" * 40,
                                       status=DeployTrain.Status.DEPLOYING_LOWER)
    outcome = []
    real_end = _answers._end

    def end_while_a_worker_records(locked, *args, **kwargs):
        other = threading.Thread(target=insert_referencing, args=("train_id", train.pk, outcome))
        other.start()
        other.join(10)
        return real_end(locked, *args, **kwargs)

    monkeypatch.setattr(_answers, "_end", end_while_a_worker_records)
    _answers.cancel(train, UserFactory(username="rm"), "not today")
    assert outcome == ["inserted"]
    assert DeployTrain.objects.get(pk=train.pk).status == DeployTrain.Status.CANCELLED


def test_a_status_change_read_under_a_lock_lets_rows_that_reference_it_in():
    require(connection.vendor == "postgresql", "PostgreSQL (DATABASE_URL=postgres://...)")
    repository = RepositoryFactory(name="locks")
    build = BuildFactory(commit=CommitFactory(repository=repository), status="running")
    outcome = []
    with transaction.atomic():
        # More than one status can move to cancelled: the current one is read under a lock.
        assert transition(Build.objects.get(pk=build.pk), Build.Status.CANCELLED)
        other = threading.Thread(target=insert_referencing, args=("build_id", build.pk, outcome))
        other.start()
        other.join(10)
    assert outcome == ["inserted"]
