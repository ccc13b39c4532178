"""The wall's snapshot (radiators/snapshot.py) against real rows: branch tiles (exceptions
first, red streaks, claims, sick building, flaky apart, +N more, all green, no results),
the train strip and authors of a real DeployTrain, the countdown from the repository's
PeriodicTask, test health from the rollups (radiators/rollups.py), and the page and
snapshot.json within ten queries. The wall's POST endpoints are checked here too."""

import json
from datetime import datetime, timedelta

import pytest
from django.utils import timezone

from nodes.models import Node, NodeLease
from pipeline.models import Approval, Build, Commit, DeployTrain, Job, TestResult, TrainCommit
from pipeline.services.train_schedule import ensure_schedule
from radiators import rollups, snapshot
from radiators.models import Claim, SuiteDay, TestCaseDay, WallLayout
from radiators.snapshot import wall_snapshot
from tests.factories import CommitFactory, RepositoryFactory, UserFactory

pytestmark = pytest.mark.django_db

NOW = timezone.now()


@pytest.fixture
def shop(db):
    return RepositoryFactory(name="shop", default_branch="master")


@pytest.fixture
def alice(db):
    return UserFactory(username="alice")


@pytest.fixture
def bob(db):
    return UserFactory(username="bob")


def make_build(repository, branch="master", status="passed", *, minutes_ago=0, kind=None,
               sha=None, **fields):
    commit = (Commit.objects.get_or_create(repository=repository, sha=sha)[0] if sha
              else CommitFactory(repository=repository))
    at = NOW - timedelta(minutes=minutes_ago)
    ended = status in ("passed", "failed", "error", "cancelled")
    build = Build.objects.create(
        repository=repository, commit=commit, sha=commit.sha, branch=branch,
        kind=kind or ("master" if branch == repository.default_branch else "branch"),
        status=status, started_at=at - timedelta(minutes=3) if status != "queued" else None,
        finished_at=at if ended else None, **fields)
    Build.objects.filter(pk=build.pk).update(created_at=at - timedelta(minutes=4))
    return build


def make_job(build, name, status, *, junit="", seconds=60, started=None, **fields):
    started = started or build.started_at or NOW
    ended = status in ("passed", "failed", "error", "cancelled")
    return Job.objects.create(build=build, name=name, status=status, command=["true"], timeout=60,
                              junit_path=junit, started_at=started,
                              finished_at=started + timedelta(seconds=seconds) if ended else None,
                              **fields)


def store(job, results, day=None):
    """What jobs._store_test_results does with a parsed report: rollups, then the rows."""
    rows = [{"suite": suite, "classname": "tests.Case", "name": name, "outcome": outcome,
             "duration": duration, "message": ""} for suite, name, outcome, duration in results]
    rollups.record_results(job, rows, day=day)
    TestResult.objects.bulk_create(TestResult(job=job, **row) for row in rows)


def lease(repository, branch, name=None, health=Node.Health.HEALTHY):
    node = Node.objects.create(name=name or f"bn-{branch.replace('/', '-')}", base_path="/tmp/x",
                               transport=Node.Transport.LOCAL, health=health)
    NodeLease.objects.create(node=node, repository=repository, branch=branch)
    return node


def tiles_by_branch(panel):
    return {tile["branch"]: tile for tile in panel["tiles"]}


# Branch tiles ---------------------------------------------------------------------------------

def test_it_shows_a_red_master_since_its_first_red_run_with_the_claim(shop, alice):
    make_build(shop, status="passed", minutes_ago=90)
    first_red = make_build(shop, status="failed", minutes_ago=60, message="unit failed")
    make_build(shop, status="cancelled", minutes_ago=50)
    make_build(shop, status="error", minutes_ago=40)
    make_build(shop, status="failed", minutes_ago=30, message="unit failed")
    Claim.objects.create(repository=shop, branch="master", user=alice, note="reverting")

    branches = wall_snapshot(shop)["panels"]["branches"]

    assert branches["state"] == "red" and branches["red"] == 1
    [tile] = branches["tiles"]
    assert tile["state"] == "failed" and tile["branch"] == "master"
    assert tile["broken_runs"] == 3  # the cancelled build is neither red nor green
    assert tile["broken_since"] == first_red.finished_at.isoformat()
    assert tile["claim"]["by"] == "alice" and tile["claim"]["note"] == "reverting"
    assert tile["message"] == "unit failed"
    assert "author" not in json.dumps(tile)  # no culprit names by default


def test_a_claim_from_an_earlier_break_is_not_shown_on_a_new_one(shop, alice):
    make_build(shop, status="failed", minutes_ago=100)
    claim = Claim.objects.create(repository=shop, branch="master", user=alice)
    Claim.objects.filter(pk=claim.pk).update(created_at=NOW - timedelta(minutes=99))
    make_build(shop, status="passed", minutes_ago=60)
    make_build(shop, status="failed", minutes_ago=10)

    [tile] = wall_snapshot(shop)["panels"]["branches"]["tiles"]
    assert tile["state"] == "failed" and tile["broken_runs"] == 1
    assert tile["claim"] is None


def test_a_red_streak_longer_than_the_window_is_counted_whole(shop, monkeypatch):
    monkeypatch.setattr(snapshot, "RECENT_WINDOW", 3)
    make_build(shop, status="passed", minutes_ago=100)
    first = make_build(shop, status="failed", minutes_ago=90)
    for minutes in (80, 70, 60, 50):
        make_build(shop, status="failed", minutes_ago=minutes)

    [tile] = wall_snapshot(shop)["panels"]["branches"]["tiles"]
    assert tile["broken_runs"] == 5
    assert tile["broken_since"] == first.finished_at.isoformat()


def test_a_running_build_never_hides_the_red_result_before_it(shop):
    make_build(shop, status="failed", minutes_ago=20)
    running = make_build(shop, status="running", minutes_ago=1)

    [tile] = wall_snapshot(shop)["panels"]["branches"]["tiles"]
    assert tile["state"] == "failed"  # sick building: still red while the next run runs
    assert tile["running"]["build_id"] == running.pk
    builds = wall_snapshot(shop)["panels"]["builds"]
    assert [b["id"] for b in builds["running"]] == [running.pk]


def test_red_only_because_of_a_known_flaky_test_is_shown_apart(shop):
    # test_sometimes failed and passed on one SHA: the rollups count a flip.
    earlier = make_build(shop, "feature/old", status="passed", minutes_ago=300, sha="a" * 40)
    store(make_job(earlier, "unit", "passed", junit="r.xml"), [("unit", "test_sometimes", "passed", 1)])
    again = make_build(shop, "feature/old", status="failed", minutes_ago=290, sha="a" * 40)
    store(make_job(again, "unit", "failed", junit="r.xml"), [("unit", "test_sometimes", "failed", 1)])
    assert TestCaseDay.objects.get(name="test_sometimes").flips == 1

    flaky = make_build(shop, "feature/flaky", status="failed", minutes_ago=10)
    store(make_job(flaky, "unit", "failed", junit="r.xml"),
          [("unit", "test_sometimes", "failed", 1), ("unit", "test_solid", "passed", 1)])
    real = make_build(shop, "feature/real", status="failed", minutes_ago=12)
    store(make_job(real, "unit", "failed", junit="r.xml"),
          [("unit", "test_sometimes", "failed", 1), ("unit", "test_solid", "failed", 1)])
    lint = make_build(shop, "feature/lint", status="failed", minutes_ago=14)
    make_job(lint, "lint", "failed")  # no test failed: a real break, whatever the tests say
    for branch in ("feature/flaky", "feature/real", "feature/lint"):
        lease(shop, branch)
    make_build(shop, status="passed", minutes_ago=5)

    branches = wall_snapshot(shop)["panels"]["branches"]
    tiles = tiles_by_branch(branches)
    assert tiles["feature/flaky"]["state"] == "flaky"
    assert tiles["feature/flaky"]["flaky_tests"] == ["test_sometimes"]
    assert tiles["feature/real"]["state"] == "failed"
    assert tiles["feature/lint"]["state"] == "failed"
    # Real breaks first, then the flaky one; the green master is collapsed.
    assert [t["branch"] for t in branches["tiles"]][-1] == "feature/flaky"
    assert branches["greens"]["count"] == 1 and branches["state"] == "red"


def test_tiles_never_shrink_beyond_readable_the_rest_is_plus_n_more(shop):
    for index in range(10):
        make_build(shop, f"feature/f{index}", status="failed", minutes_ago=index + 1)
        lease(shop, f"feature/f{index}")
    make_build(shop, status="passed", minutes_ago=1)

    branches = wall_snapshot(shop)["panels"]["branches"]
    assert len(branches["tiles"]) == snapshot.MAX_TILES == 7
    assert branches["more"] == 3
    assert branches["greens"]["count"] == 1


def test_all_green_is_one_tile_and_a_clear_state(shop):
    make_build(shop, status="failed", minutes_ago=30)
    make_build(shop, status="passed", minutes_ago=10)
    make_build(shop, "feature/a", status="passed", minutes_ago=5)
    lease(shop, "feature/a")

    branches = wall_snapshot(shop)["panels"]["branches"]
    assert branches["state"] == "all_green"
    assert branches["tiles"] == [] and branches["more"] == 0
    assert branches["greens"] == {"count": 2, "names": ["shop:feature/a", "shop:master"],
                                  "building": 0}


def test_no_results_is_its_own_state_never_green(shop):
    panels = wall_snapshot(shop)["panels"]
    assert panels["branches"]["state"] == "no_results"
    assert [t["state"] for t in panels["branches"]["tiles"]] == ["no_results"]
    assert panels["tests"] == {"state": "no_results", "suites": [], "more_suites": 0,
                               "flaky": [], "slowest": []}

    make_build(shop, status="passed", minutes_ago=3)
    make_build(shop, "feature/new", status="running", minutes_ago=1)
    branches = wall_snapshot(shop)["panels"]["branches"]
    [tile] = branches["tiles"]
    assert tile["branch"] == "feature/new" and tile["state"] == "no_results"
    assert tile["running"] is not None
    assert branches["state"] == "green_with_gaps"


def test_a_branch_node_tile_has_its_node_and_health(shop):
    make_build(shop, "feature/x", status="failed", minutes_ago=3)
    lease(shop, "feature/x", name="bn-1", health=Node.Health.DEGRADED)

    tile = tiles_by_branch(wall_snapshot(shop)["panels"]["branches"])["feature/x"]
    assert tile["node"]["name"] == "bn-1" and tile["node"]["health"] == "degraded"
    assert len(tile["sha"]) == 10


# The train ------------------------------------------------------------------------------------

def make_train(repository, status, *, minutes_ago, environments=("staging", "preview"),
               stage_minutes=(4, 6), production_minutes=None, **fields):
    train = DeployTrain.objects.create(repository=repository, head_sha=CommitFactory(
        repository=repository).sha, status=status, **fields)
    commit = CommitFactory(repository=repository)
    build = Build.objects.create(repository=repository, commit=commit, sha=train.head_sha,
                                 branch="master", kind="train", status="running", train=train,
                                 spec={"environments": list(environments)})
    at = NOW - timedelta(minutes=minutes_ago)
    for environment, minutes in zip(environments, stage_minutes, strict=False):
        make_job(build, f"deploy-{environment}", "passed", started=at, seconds=minutes * 20,
                 stage="train_deploy", environment=environment)
        make_job(build, f"acceptance-{environment}", "passed",
                 started=at + timedelta(seconds=minutes * 20), seconds=minutes * 40,
                 stage="acceptance", environment=environment)
        at += timedelta(minutes=minutes)
    if production_minutes:
        make_job(build, "production", "passed", started=at, seconds=production_minutes * 60,
                 stage="production", environment="production")
    return train


def test_the_train_strip_and_its_authors_come_from_the_deploy_train(shop, alice, bob):
    old = make_train(shop, "deployed", minutes_ago=200, stage_minutes=(5, 7), production_minutes=3)
    train = make_train(shop, "awaiting_approval", minutes_ago=20, environment="production",
                       approval_requested_at=NOW - timedelta(minutes=10),
                       message="waiting for bob to say !good")
    for position, user in enumerate([alice, bob, alice]):
        TrainCommit.objects.create(train=train, commit=CommitFactory(repository=shop),
                                   position=position, author=user)
    Approval.objects.create(train=train, user=alice, verdict="good")
    Approval.objects.create(train=old, user=bob, verdict="bad", reason="an older train's answer")

    [item] = wall_snapshot(shop)["panels"]["train"]["items"]

    data = item["train"]
    assert data["id"] == train.pk and data["status"] == "awaiting_approval"
    assert [s["name"] for s in data["stages"]] == ["staging", "preview", "production"]
    assert [s["status"] for s in data["stages"]] == ["passed", "passed", "approval"]
    assert [s["acceptance"] for s in data["stages"]] == ["passed", "passed", None]
    assert data["stages"][0]["sha"] == train.head_sha[:10]
    assert data["stages"][0]["seconds"] == 4 * 60
    # The usual durations: the median over the recent trains that passed each stage.
    assert data["stages"][1]["usual_seconds"] == 390  # the median of 7 min (old) and 6 min
    assert data["stages"][2]["usual_seconds"] == 3 * 60
    assert data["eta"] is None  # it waits on people: no ETA
    assert data["authors"] == [
        {"username": "alice", "answer": "good",
         "answered_at": Approval.objects.get(train=train, user=alice).created_at.isoformat(),
         "blocking_since": None},
        {"username": "bob", "answer": None, "answered_at": None,
         "blocking_since": train.approval_requested_at.isoformat()},
    ]


def test_a_train_in_an_environment_gets_an_eta_from_the_usual_durations(shop):
    make_train(shop, "deployed", minutes_ago=300, environments=("staging", "preview"),
               stage_minutes=(5, 10), production_minutes=4)
    train = make_train(shop, "testing", minutes_ago=2, environments=("staging", "preview"),
                       stage_minutes=(5,), environment="staging")
    Job.objects.filter(build__train=train, name="acceptance-staging").update(
        status="running", finished_at=None)

    data = wall_snapshot(shop)["panels"]["train"]["items"][0]["train"]
    assert [s["status"] for s in data["stages"]] == ["testing", "pending", "pending"]
    eta = datetime.fromisoformat(data["eta"])
    # Staging's rest (5 min usual, 2 min in), preview (10) and production (4): about 17 min.
    assert timedelta(minutes=16) < eta - NOW < timedelta(minutes=18)


def test_the_countdown_to_the_next_tick_comes_from_the_periodic_task(shop):
    task, _ = ensure_schedule(shop, "30 * * * *")

    [item] = wall_snapshot(shop)["panels"]["train"]["items"]
    assert item["train"] is None and item["next_tick"]["enabled"] is True
    at = datetime.fromisoformat(item["next_tick"]["at"])
    assert timezone.localtime(at).minute == 30 and timezone.localtime(at).second == 0
    assert timedelta(0) < at - timezone.now() <= timedelta(hours=1)

    task.enabled = False
    task.save()
    [item] = wall_snapshot(shop)["panels"]["train"]["items"]
    assert item["next_tick"] == {"at": None, "enabled": False}


# Environments, test health, nodes, layout ------------------------------------------------------

def test_environments_show_the_sha_their_nodes_run(shop):
    for name, sha in (("stg-1", "b" * 40), ("prod-1", "c" * 40), ("prod-2", "d" * 40),
                      ("prod-3", "c" * 40)):
        Node.objects.create(name=name, environment="staging" if name == "stg-1" else "production",
                            base_path="/tmp/x", current_sha=sha, repository=shop,
                            health=Node.Health.HEALTHY if name != "prod-3" else Node.Health.UNHEALTHY)
    panels = wall_snapshot(shop)["panels"]
    assert panels["environments"]["environments"] == [
        {"name": "staging", "sha": "b" * 10, "mixed": False, "nodes": 1, "healthy": 1, "changed_at": None},
        {"name": "production", "sha": "c" * 10, "mixed": True, "nodes": 3, "healthy": 2,
         "changed_at": None},
    ]
    assert panels["nodes"]["counts"] == {"healthy": 3, "unhealthy": 1}
    assert [n["name"] for n in panels["nodes"]["problems"]] == ["prod-3"]


def test_test_health_rates_flaky_and_slowest_come_from_the_rollups(shop):
    today, long_ago = timezone.localdate(), timezone.localdate() - timedelta(days=4)
    old = make_build(shop, status="failed", minutes_ago=60 * 24 * 4)
    store(make_job(old, "unit", "failed", junit="r.xml"),
          [("unit", "test_a", "failed", 0.1), ("unit", "test_b", "failed", 0.2)], day=long_ago)
    build = make_build(shop, status="passed", minutes_ago=5)
    store(make_job(build, "unit", "passed", junit="r.xml"),
          [("unit", "test_a", "passed", 0.1), ("unit", "test_b", "passed", 9.0),
           ("unit", "test_c", "skipped", 0)], day=today)
    store(make_job(build, "smoke", "passed", junit="s.xml"), [("smoke", "test_home", "passed", 2.5)],
          day=today)

    tests = wall_snapshot(shop)["panels"]["tests"]
    assert tests["state"] == "results"
    assert tests["suites"] == [
        {"suite": "unit", "rate_7d": 50.0, "runs_7d": 4, "rate_24h": 100.0, "runs_24h": 2},
        {"suite": "smoke", "rate_7d": 100.0, "runs_7d": 1, "rate_24h": 100.0, "runs_24h": 1},
    ]
    assert [t["name"] for t in tests["slowest"]][:2] == ["test_b", "test_home"]
    assert tests["slowest"][0]["mean"] == 4.6 and tests["slowest"][0]["longest"] == 9.0
    assert tests["flaky"] == []  # failed and passed, but on different SHAs: not flaky


def test_the_layout_lives_on_the_server(shop):
    assert wall_snapshot(shop)["panels"]["layout"] == {"order": snapshot.PANELS, "sound": False}
    WallLayout.objects.create(repository=shop, panels=["train", "branches", "nope"], sound=True)
    shop.refresh_from_db()
    assert wall_snapshot(shop)["panels"]["layout"] == {"order": ["train", "branches"], "sound": True}


def test_the_all_repositories_wall_shows_each_repository(shop):
    other = RepositoryFactory(name="blog", default_branch="main")
    make_build(shop, status="failed", minutes_ago=3)
    make_build(other, "main", status="passed", minutes_ago=2)

    data = wall_snapshot(None)
    assert data["repository"] is None
    branches = data["panels"]["branches"]
    assert [t["key"] for t in branches["tiles"]] == ["shop:master"]
    assert branches["greens"]["names"] == ["blog:main"]


# Size and speed ---------------------------------------------------------------------------------

@pytest.fixture
def busy_wall(shop, alice, bob, monkeypatch):
    """A realistic wall: red and green branches on nodes, a claim, running builds, a train
    awaiting approval with its history, a schedule, test rollups and failing tests."""
    make_train(shop, "deployed", minutes_ago=300, production_minutes=4)
    train = make_train(shop, "awaiting_approval", minutes_ago=20, environment="production",
                       approval_requested_at=NOW - timedelta(minutes=5))
    for position, user in enumerate([alice, bob]):
        TrainCommit.objects.create(train=train, commit=CommitFactory(repository=shop),
                                   position=position, author=user)
    ensure_schedule(shop, "0 * * * *")
    for index in range(12):
        status = "failed" if index % 3 == 0 else "passed"
        build = make_build(shop, f"feature/b{index}", status=status, minutes_ago=index + 2)
        store(make_job(build, "unit", status, junit="r.xml"),
              [("unit", f"test_{n}", "failed" if status == "failed" and n == 0 else "passed", n / 10)
               for n in range(20)])
        make_job(build, "lint", "passed")
        lease(shop, f"feature/b{index}")
    make_build(shop, status="failed", minutes_ago=40)
    make_build(shop, status="running", minutes_ago=1)
    Claim.objects.create(repository=shop, branch="master", user=alice)
    make_build(shop, "feature/b1", status="running", minutes_ago=0)
    return shop


def test_the_full_wall_renders_within_ten_queries(client, busy_wall, django_assert_max_num_queries):
    with django_assert_max_num_queries(10):
        page = client.get("/radiators/shop/")
    assert page.status_code == 200
    with django_assert_max_num_queries(10):
        data = client.get("/radiators/shop/snapshot.json").json()
    with django_assert_max_num_queries(10):
        assert client.get("/radiators/").status_code == 200
    panels = data["panels"]
    assert panels["branches"]["red"] == 5 and panels["branches"]["more"] == 0
    assert panels["train"]["items"][0]["train"]["authors"][1]["blocking_since"]
    assert panels["tests"]["state"] == "results"
    # Small: what the wall shows, never commands or logs.
    assert len(json.dumps(data)) < 20_000
    assert "command" not in json.dumps(panels)


# The page and its endpoints ------------------------------------------------------------------

def test_an_anonymous_viewer_gets_the_panels_and_no_controls(client, shop):
    html = client.get("/radiators/shop/").content.decode()
    assert 'id="wall-snapshot"' in html and 'data-socket-url="/ws/radiators/shop/"' in html
    assert 'data-role="controls"' not in html and "csrf-token" not in html
    assert client.post("/radiators/shop/command", {"text": "!status"},
                       content_type="application/json").status_code == 403


def test_a_signed_in_user_gets_controls_and_every_post_needs_the_csrf_token(shop, alice):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    html = client.get("/radiators/shop/").content.decode()
    assert 'data-role="controls"' in html and 'data-action="good"' in html
    assert 'data-action="force"' not in html  # release managers only
    refused = client.post("/radiators/shop/command", {"text": "!status"},
                          content_type="application/json")
    assert refused.status_code == 403
    token = client.cookies["csrftoken"].value
    answer = client.post("/radiators/shop/command", {"text": "!status"},
                         content_type="application/json", HTTP_X_CSRFTOKEN=token)
    assert answer.json() == {"ok": True, "message": "shop has no deploy train yet"}


def test_the_command_endpoint_goes_through_chatops_permissions(client, shop, alice):
    client.force_login(alice)
    answer = client.post("/radiators/shop/command", {"command": "rollback", "args": ["why not"]},
                         content_type="application/json")
    assert answer.status_code == 403 and answer.json()["message"] == "alice may not rollback"
    answer = client.post("/radiators/shop/command", {"command": "rm", "args": []},
                         content_type="application/json")
    assert answer.status_code == 400


def test_claim_and_unclaim_a_break_from_the_wall(client, shop, alice):
    client.force_login(alice)
    assert client.post("/radiators/shop/claim", {"branch": "master"},
                       content_type="application/json").status_code == 400  # nothing red
    make_build(shop, status="failed", minutes_ago=1)
    answer = client.post("/radiators/shop/claim", {"branch": "master"}, content_type="application/json")
    assert answer.json() == {"ok": True, "message": "alice is on master"}
    [tile] = wall_snapshot(shop)["panels"]["branches"]["tiles"]
    assert tile["claim"]["by"] == "alice"
    client.post("/radiators/shop/claim", {"branch": "master", "release": True},
                content_type="application/json")
    [tile] = wall_snapshot(shop)["panels"]["branches"]["tiles"]
    assert tile["claim"] is None


def test_a_job_storing_its_junit_report_updates_the_rollups(shop, tmp_path):
    from pipeline.services.jobs import _store_test_results

    (tmp_path / "report.xml").write_text(
        '<testsuite name="unit"><testcase classname="t.C" name="test_ok" time="0.5"/>'
        '<testcase classname="t.C" name="test_bad" time="1.5"><failure message="no"/></testcase>'
        '<testcase classname="t.C" name="test_later" time="0"><skipped/></testcase></testsuite>')
    job = make_job(make_build(shop, status="running"), "unit", "running", junit="report.xml")

    assert _store_test_results(job, tmp_path) == "; 3 tests, 1 failed"

    suite = SuiteDay.objects.get(repository=shop, suite="unit")
    assert (suite.runs, suite.failures, suite.skipped, suite.duration) == (3, 1, 1, 2.0)
    bad = TestCaseDay.objects.get(repository=shop, name="test_bad")
    assert (bad.runs, bad.failures, bad.flips, bad.duration_max) == (1, 1, 0, 1.5)


def test_the_version_is_the_deployments_or_a_digest_of_the_walls_code(settings, tmp_path):
    import re

    from radiators.snapshot import _code_digest, server_version

    _code_digest.cache_clear()
    current = server_version()
    assert re.fullmatch(r"[0-9a-f]{12}", current) and server_version() == current
    # A changed wall (here: its stylesheet found first in another static folder) is a new
    # version, so open pages reload when a server with it starts.
    static = tmp_path / "radiators"
    static.mkdir()
    (static / "radiator.css").write_text("body { color: red; }\n")
    original = list(settings.STATICFILES_DIRS)
    settings.STATICFILES_DIRS = [tmp_path, *original]
    _code_digest.cache_clear()
    try:
        assert server_version() != current
    finally:
        settings.STATICFILES_DIRS = original
        _code_digest.cache_clear()
    assert server_version() == current
    settings.TRAINYARD_VERSION = "2026.12.1"
    assert server_version() == "2026.12.1"


def test_a_claim_ends_when_the_branch_is_green_again(shop, alice):
    from pipeline.models import Event
    from pipeline.services.builds import end_build
    from radiators.claims import claim

    make_build(shop, status="failed", minutes_ago=30)
    claim(shop, "master", alice, note="on it")
    fix = make_build(shop, status="running", minutes_ago=1)
    assert Claim.objects.filter(released_at=None).count() == 1
    assert end_build(fix, Build.Status.PASSED, "all checks passed")
    assert not Claim.objects.filter(released_at=None).exists()
    assert Event.objects.filter(kind="radiator.claim", new="released", build=fix).exists()
    # A red end keeps the claim of whoever is on it.
    make_build(shop, status="failed", minutes_ago=0)
    claim(shop, "master", alice)
    again = make_build(shop, status="running", minutes_ago=0)
    end_build(again, Build.Status.FAILED, "unit failed")
    assert Claim.objects.filter(released_at=None).count() == 1


@pytest.mark.parametrize("panels", [{"branches", "builds"}, {"branches", "builds", "tests"},
                                    {"train"}, {"environments", "nodes"}, {"layout"}])
def test_a_read_of_some_panels_gives_them_as_the_whole_wall_does(busy_wall, panels):
    whole = wall_snapshot(busy_wall)["panels"]
    assert wall_snapshot(busy_wall, panels)["panels"] == {name: whole[name] for name in panels}


def test_only_builds_and_jobs_riding_no_train_re_read_part_of_the_wall():
    from radiators.snapshot import panels_changed_by

    assert panels_changed_by("build.status", on_train=False) == {"branches", "builds"}
    assert panels_changed_by("build.requested", on_train=False) == {"branches", "builds"}
    assert panels_changed_by("job.status", on_train=False) == {"branches", "builds", "tests"}
    for kind in ("build.status", "job.status"):
        assert panels_changed_by(kind, on_train=True) is None
    for kind in ("node.health", "deployment.status", "deploytrain.status", "radiator.claim",
                 "lock.created", "wall", "repository.added", ""):
        assert panels_changed_by(kind, on_train=False) is None
