"""Pools per repository: a node is shared by every repository, or reserved for one.

A repository's builds take its own nodes first, then shared ones, and never a node
reserved for another repository, also when builds of both race for the same nodes.
"""

from datetime import timedelta

import pytest
from django.utils import timezone

from nodes.models import Node, NodeLease
from nodes.services.allocation import allocate_node, has_branch_pool, release_node
from tests.factories import BuildFactory, RepositoryFactory
from tests.helpers import race


@pytest.fixture
def repos(db):
    return RepositoryFactory(name="app"), RepositoryFactory(name="shop")


def build_of(repository, branch="feature/x", **fields):
    return BuildFactory(repository=repository, commit__repository=repository, branch=branch, **fields)


@pytest.mark.django_db
def test_it_uses_the_repositorys_own_nodes_before_shared_ones(repos, make_node):
    app, _ = repos
    shared = make_node("shared-1")  # never used: it would come first in a single pool
    own = make_node("app-1", repository=app, last_changed_at=timezone.now())
    assert allocate_node(build_of(app, "feature/a")) == own
    assert allocate_node(build_of(app, "feature/b")) == shared
    assert allocate_node(build_of(app, "feature/c")) is None


@pytest.mark.django_db
def test_a_node_reserved_for_one_repository_is_never_used_by_another(repos, make_node):
    app, shop = repos
    make_node("app-1", repository=app)
    make_node("app-2", repository=app)
    assert allocate_node(build_of(shop)) is None
    shared = make_node("shared-1", last_changed_at=timezone.now() - timedelta(days=1))
    assert allocate_node(build_of(shop, "feature/y")) == shared


@pytest.mark.django_db
def test_the_branchs_own_node_still_wins_when_it_is_shared(repos, make_node):
    app, _ = repos
    shared = make_node("shared-1")
    make_node("app-1", repository=app)
    first = build_of(app, "feature/sticky")
    NodeLease.objects.create(node=shared, repository=app, branch="feature/sticky")
    assert allocate_node(first) == shared
    release_node(first)
    assert allocate_node(build_of(app, "feature/sticky")) == shared


@pytest.mark.django_db
def test_a_lease_on_a_node_reserved_since_for_another_repository_is_not_followed(repos, make_node):
    app, shop = repos
    taken = make_node("was-shared", repository=shop)
    NodeLease.objects.create(node=taken, repository=app, branch="feature/x")
    shared = make_node("shared-1")
    assert allocate_node(build_of(app)) == shared
    assert not NodeLease.objects.filter(node=taken, repository=app).exists()


@pytest.mark.django_db
def test_a_repository_has_a_branch_pool_when_any_enabled_node_could_serve_it(repos, make_node):
    app, shop = repos
    assert not has_branch_pool(app)
    reserved = make_node("app-1", repository=app)
    assert has_branch_pool(app) and not has_branch_pool(shop)
    Node.objects.filter(pk=reserved.pk).update(enabled=False)
    assert not has_branch_pool(app)
    # Unhealthy or busy nodes still count: the deploy waits for them and says why.
    make_node("shared-1", health=Node.Health.UNHEALTHY)
    assert has_branch_pool(app) and has_branch_pool(shop)
    make_node("stage-1", environment=Node.Environment.STAGING, repository=shop)
    Node.objects.filter(name="shared-1").update(enabled=False)
    assert not has_branch_pool(shop)


@pytest.mark.django_db(transaction=True)
def test_racing_builds_of_two_repositories_never_cross_their_reservations(repos, make_node):
    app, shop = repos
    own = {app.pk: {make_node(f"app-{i}", repository=app).pk for i in range(2)},
           shop.pk: {make_node(f"shop-{i}", repository=shop).pk for i in range(2)}}
    shared = {make_node(f"shared-{i}").pk for i in range(2)}
    builds = [build_of(repo, f"feature/race-{n}") for n in range(4) for repo in (app, shop)]
    got = race(allocate_node, [(build,) for build in builds])
    taken = [node.pk for node in got if node]
    assert len(taken) == len(set(taken)) == 6  # every node once; two builds wait
    for build, node in zip(builds, got, strict=True):
        if node:
            assert node.pk in own[build.repository_id] | shared
    # A repository's builds took all its own nodes before any of them waited.
    for repository_id, nodes in own.items():
        holders = Node.objects.filter(pk__in=nodes).values_list("held_by__repository", flat=True)
        assert set(holders) == {repository_id}
    for node in Node.objects.all():
        assert node.held_by is not None
