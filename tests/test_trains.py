"""The deploy train end to end: real git repositories, green master builds run by the
real worker, local nodes whose apps really run, acceptance tests in the sandbox. The
schedule is driven directly (a tick is a function call): nothing here sleeps."""

import pytest

from pipeline.models import Approval, DeployTrain, Event, Job, TrainCommit
from pipeline.services import trains
from pipeline.services.trains import TrainError
from tests.factories import UserFactory
from tests.helpers import wait_until
from tests.trainworld import (
    ALICE,
    BOB,
    CAROL,
    make_world,
    serving,
    wait_for_train,
)

T = DeployTrain.Status


@pytest.fixture
def world(worker, people, tmp_path):
    world = make_world(tmp_path)
    yield world
    world.stop_apps()


@pytest.fixture
def world3(worker, people, tmp_path):
    world = make_world(tmp_path, environments=("staging", "preview", "preprod"))
    yield world
    world.stop_apps()


def test_no_candidate_means_no_train(world):
    assert trains.tick(world.repository).startswith("no new green candidate for shop")
    with pytest.raises(TrainError, match="no new green candidate"):
        trains.start_train(world.repository)
    assert not DeployTrain.objects.exists()


def test_a_two_author_train_goes_through_every_environment_to_production(world3, people):
    alice, bob, _ = people
    world3.green()
    bob_sha = world3.commit({"bye.txt": "bye\n"}, "Say goodbye", author=BOB)
    head = world3.green().sha
    assert head == bob_sha

    train = trains.tick(world3.repository)
    assert isinstance(train, DeployTrain) and train.head_sha == head
    wait_for_train(train, T.AWAITING_APPROVAL, T.FAILED)
    assert train.status == T.AWAITING_APPROVAL, train.message
    assert train.message == "waiting for alice, bob to say !good"
    for environment in ("staging", "preview", "preprod"):
        assert serving(world3.node(f"{environment}-1")) == head
        assert Job.objects.get(build=train.build, name=f"acceptance-{environment}").status == "passed"
    # Production has not changed: nothing is deployed before every author says good.
    assert all(serving(world3.node(f"prod-{i}")) is None for i in (1, 2, 3))
    assert [c.author for c in TrainCommit.objects.filter(train=train)] == [alice, bob]
    assert alice.notifications.filter(train=train, kind="approval_requested").exists()

    trains.answer(train, alice, "good")
    wait_for_train(train, T.AWAITING_APPROVAL)
    assert train.message == "waiting for bob to say !good"  # one of two: it still waits
    trains.answer(train, bob, "good")
    wait_for_train(train, T.DEPLOYED, T.FAILED, timeout=180)
    assert train.status == T.DEPLOYED, train.message
    assert [serving(world3.node(f"prod-{i}")) for i in (1, 2, 3)] == [head] * 3
    assert {world3.node(f"prod-{i}").current_sha for i in (1, 2, 3)} == {head}
    assert trains.production_sha(world3.repository) == head
    kinds = list(Event.objects.filter(train=train, kind="deploytrain.status")
                 .order_by("id").values_list("new", flat=True))
    assert kinds == ["deploying_lower", "testing", "deploying_lower", "testing",
                     "deploying_lower", "testing", "awaiting_approval", "deploying_production",
                     "deployed"]
    # The next train has nothing new to carry.
    with pytest.raises(TrainError, match="no new green candidate for shop since production"):
        trains.start_train(world3.repository)


def test_acceptance_failing_in_preprod_fails_the_train_and_production_never_changes(world3):
    world3.commit({"broken": "preprod\n"}, "Break acceptance in pre-prod")
    world3.green()
    train = trains.start_train(world3.repository)
    wait_for_train(train, T.FAILED, T.AWAITING_APPROVAL)
    assert train.status == T.FAILED
    assert train.message.startswith("acceptance tests failed in preprod")
    statuses = {env["name"]: env["status"] for env in trains.status(train)["environments"]}
    assert statuses == {"staging": "passed", "preview": "passed", "preprod": "failed"}
    assert all(serving(world3.node(f"prod-{i}")) is None for i in (1, 2, 3))
    # Its head is never carried again: the next tick needs a newer candidate.
    assert trains.tick(world3.repository).startswith("no new green candidate")
    world3.commit({"broken": None}, "Fix acceptance")
    newer = world3.green()
    assert trains.start_train(world3.repository).head_sha == newer.sha


def test_a_veto_stops_the_train_and_a_force_needs_override_veto(world, people):
    alice, bob, manager = people
    world.commit({"b.txt": "b"}, "Bob's change", author=BOB)
    world.green()
    train = trains.start_train(world.repository)
    wait_for_train(train, T.AWAITING_APPROVAL)
    with pytest.raises(TrainError, match="a veto needs a reason"):
        trains.answer(train, bob, "bad", "")
    with pytest.raises(TrainError, match=r"only the train's authors \(alice, bob\)"):
        trains.answer(train, UserFactory(username="mallory"), "good")
    trains.answer(train, alice, "good")
    trains.answer(train, bob, "bad", "the checkout page is slow")
    train.refresh_from_db()
    assert train.status == T.VETOED and train.message == "vetoed by bob: the checkout page is slow"
    with pytest.raises(TrainError, match="answers are closed"):
        trains.answer(train, alice, "good")
    with pytest.raises(TrainError, match=r"vetoed by bob \(the checkout page is slow\): a veto "
                                         r"stands unless --override-veto"):
        trains.force(train, manager, "ship it")
    assert all(serving(world.node(f"prod-{i}")) is None for i in (1, 2, 3))

    trains.force(train, manager, "the slowness is known and fixed in prod config",
                 override_veto=True)
    wait_for_train(train, T.DEPLOYED, T.FAILED, timeout=180)
    assert train.status == T.DEPLOYED, train.message
    assert [serving(world.node(f"prod-{i}")) for i in (1, 2, 3)] == [train.head_sha] * 3


def test_a_force_skips_the_waiting_for_answers(world, people):
    _, bob, manager = people
    world.commit({"b.txt": "b"}, "Bob's change", author=BOB)
    world.green()
    train = trains.start_train(world.repository)
    trains.force(train, manager, "hotfix for the outage")  # before the authors are asked
    wait_for_train(train, T.DEPLOYED, T.FAILED, timeout=180)
    assert train.status == T.DEPLOYED, train.message
    assert not Approval.objects.filter(train=train).exists()
    assert train.forced_by == manager


def test_unmapped_authors_are_shown_and_do_not_block(world, people):
    world.commit({"c.txt": "c"}, "Contractor's change", author=CAROL)
    world.green()
    train = trains.start_train(world.repository)
    wait_for_train(train, T.AWAITING_APPROVAL, T.DEPLOYING_PRODUCTION, T.DEPLOYED)
    status = trains.status(train)
    assert status["unmapped_authors"] == [{"name": "Carol Contractor",
                                           "email": "carol@elsewhere.example"}]
    assert [a["username"] for a in status["authors"]] == ["alice"]


def test_two_ticks_in_one_hour_make_one_train(world):
    from django.utils import timezone

    world.green()
    now = timezone.now().replace(minute=0, second=1)
    first = trains.tick(world.repository, now=now)
    assert isinstance(first, DeployTrain)
    assert trains.tick(world.repository, now=now.replace(minute=30)).startswith("train #")
    trains.cancel(first, UserFactory(username="ops"), "testing ticks")
    assert trains.tick(world.repository, now=now.replace(minute=59)) == \
        f"a train already started for {timezone.localtime(now):%Y-%m-%dT%H}"
    assert DeployTrain.objects.count() == 1


def test_a_locked_environment_holds_the_train_until_unlocked(world, people):
    alice, _, manager = people
    world.green()
    trains.lock(world.repository, manager, "database migration in staging", environment="staging")
    with pytest.raises(TrainError, match="already staging locked by rm"):
        trains.lock(world.repository, manager, "again", environment="staging")
    train = trains.start_train(world.repository)
    wait_until(lambda: DeployTrain.objects.get(pk=train.pk).message.startswith("waiting at"),
               message="the train to wait at staging")
    train.refresh_from_db()
    assert (train.status, train.environment) == (T.DEPLOYING_LOWER, "staging")
    assert train.message == ("waiting at staging: staging locked by rm: database migration in "
                             "staging")
    assert not Job.objects.filter(build=train.build).exists()  # nothing deployed meanwhile
    assert trains.why(world.repository, train.head_sha) == (
        f"{train.head_sha[:10]} rides train #{train.pk}, which is waiting at staging: staging "
        "locked by rm: database migration in staging; it goes on when unlocked")
    trains.unlock(world.repository, manager, environment="staging")
    wait_for_train(train, T.AWAITING_APPROVAL)
    assert serving(world.node("staging-1")) == train.head_sha


def test_a_freeze_window_makes_ticks_do_nothing(world, people):
    from django.utils import timezone

    from pipeline.models import FreezeWindow

    _, _, manager = people
    world.green()
    now = timezone.localtime()
    FreezeWindow.objects.create(name="weekend", start_weekday=now.weekday(),
                                start_time=now.replace(hour=0, minute=0).time(),
                                end_weekday=(now.weekday() + 1) % 7,
                                end_time=now.replace(hour=0, minute=0).time())
    assert trains.tick(world.repository, now=now).startswith("frozen: weekend")
    with pytest.raises(TrainError, match="shop is frozen .*--override-lock"):
        trains.start_train(world.repository)
    assert not DeployTrain.objects.exists()
    train = trains.start_train(world.repository, user=manager, override_lock=True)
    assert train.override_lock


def test_a_train_never_carries_a_commit_without_the_revert_that_follows_it(world, people):
    alice, bob, _ = people
    world.green()  # the app itself: the first candidate
    bad = world.commit({"bad.txt": "oops\n"}, "Add a bad thing", author=ALICE)
    world.green()
    world.repo.git("revert", "--no-edit", bad, env={"GIT_AUTHOR_NAME": "Bob",
                                                    "GIT_AUTHOR_EMAIL": "bob@example.com"})
    revert = world.repo.head()
    # The sync has seen the revert on master; its master build has not passed yet.
    world.repository.default_branch_head = revert
    world.repository.save()
    train = trains.start_train(world.repository)
    assert bad not in {c.commit.sha for c in train.train_commits.select_related("commit")}
    trains.cancel(train, alice, "waiting for the revert")
    world.green()
    train = trains.start_train(world.repository)
    rows = {c.commit.sha: c for c in train.train_commits.select_related("commit")}
    assert train.head_sha == revert and bad in rows
    assert rows[revert].reverts == bad and rows[revert].author == bob
    assert [c for c in trains.status(train)["commits"] if c["sha"] == revert][0]["is_revert"]


def test_authors_who_have_not_answered_are_reminded_once_per_wait(world, people, settings,
                                                                  mailoutbox):
    from datetime import timedelta

    from django.utils import timezone

    alice, bob, _ = people
    settings.TRAINYARD = {**settings.TRAINYARD, "APPROVAL_REMINDER": 600}
    world.commit({"b.txt": "b"}, "Bob's change", author=BOB)
    world.green()
    train = trains.start_train(world.repository)
    wait_for_train(train, T.AWAITING_APPROVAL)
    # The worker e-mails after its transaction commits: the status can be seen first.
    wait_until(lambda: len(mailoutbox) >= 2, message="the two approval e-mails")
    assert sorted(m.to[0] for m in mailoutbox) == ["alice@example.com", "bob@example.com"]
    trains.answer(train, alice, "good")
    assert trains.remind_authors() == 0  # not due yet
    later = timezone.now() + timedelta(seconds=601)
    assert trains.remind_authors(now=later) == 1
    assert trains.remind_authors(now=later) == 0
    reminders = train.notifications.filter(kind="reminder")
    assert [n.user for n in reminders] == [bob]
    assert "still waits for bob" in reminders.get().message


def test_the_spec_seeds_a_schedule_per_repository_that_ticks(world):
    import json

    from django_celery_beat.models import PeriodicTask

    from pipeline.tasks import train_tick

    world.green()
    task = PeriodicTask.objects.get(name="deploy train: shop")
    assert (task.task, json.loads(task.args)) == ("pipeline.tasks.train_tick", [world.repository.pk])
    assert (task.crontab.minute, task.crontab.hour) == ("0", "*")
    result = train_tick(world.repository.pk)
    assert result == f"started train #{DeployTrain.objects.get().pk}"


def ship(world, manager, reason="ship"):
    """A train with master's newest candidate, forced to production; returns it deployed."""
    train = trains.start_train(world.repository)
    trains.force(train, manager, reason)
    wait_for_train(train, T.DEPLOYED, T.FAILED, timeout=180)
    assert train.status == T.DEPLOYED, train.message
    return train


def test_production_batch_2_failing_rolls_back_touched_nodes_and_leaves_the_rest(
        world, people, settings):
    from nodes.models import Deployment

    _, _, manager = people
    settings.TRAINYARD = {**settings.TRAINYARD, "TRAIN_BATCH_SIZE": 1}
    world.green()
    v1 = ship(world, manager).head_sha
    world.commit({"crash-on": "prod-2\n"}, "Crash on prod-2", author=BOB)
    world.green()
    train = trains.start_train(world.repository)
    trains.force(train, manager, "ship it")
    wait_for_train(train, T.FAILED, T.DEPLOYED, timeout=180)
    assert train.status == T.FAILED
    assert "prod-2" in train.message and "rolled back prod-1" in train.message
    # prod-1 (off-cycle, batch 1) was switched and came back; prod-2 put itself back;
    # prod-3 (batch 3) never got a command.
    assert [serving(world.node(f"prod-{i}")) for i in (1, 2, 3)] == [v1] * 3
    assert {world.node(f"prod-{i}").current_sha for i in (1, 2, 3)} == {v1}
    outcomes = dict(Deployment.objects.filter(build=train.build, node__environment="production")
                    .values_list("node__name", "status"))
    assert outcomes == {"prod-1": "rolled_back", "prod-2": "rolled_back"}
    assert not world.node("prod-3").draining
    assert trains.production_sha(world.repository) == v1


def test_a_rollback_takes_production_back_and_the_next_train_needs_a_newer_candidate(
        world, people):
    _, _, manager = people
    world.green()
    v1 = ship(world, manager).head_sha
    world.commit({"b.txt": "b"}, "Bob's change", author=BOB)
    world.green()
    v2 = ship(world, manager).head_sha
    rollback = trains.start_rollback(world.repository, manager, "v2 breaks checkout")
    assert (rollback.kind, rollback.head_sha, rollback.base_sha) == ("rollback", v1, v2)
    wait_for_train(rollback, T.DEPLOYED, T.FAILED, timeout=180)
    assert rollback.status == T.DEPLOYED, rollback.message
    assert [serving(world.node(f"prod-{i}")) for i in (1, 2, 3)] == [v1] * 3
    assert trains.production_sha(world.repository) == v1
    with pytest.raises(TrainError, match="no new green candidate"):
        trains.start_train(world.repository)  # v2 is not shipped again by itself
    world.commit({"b.txt": "fixed"}, "Fix bob's change", author=BOB)
    v3 = world.green().sha
    assert trains.start_train(world.repository).head_sha == v3


def test_two_concurrent_approvals_move_the_train_once(world, people):
    from tests.helpers import race

    alice, bob, _ = people
    world.commit({"b.txt": "b"}, "Bob's change", author=BOB)
    world.green()
    train = trains.start_train(world.repository)
    wait_for_train(train, T.AWAITING_APPROVAL)
    race(lambda user: trains.answer(DeployTrain.objects.get(pk=train.pk), user, "good"),
         [(alice,), (bob,)])
    wait_for_train(train, T.DEPLOYED, T.FAILED, timeout=180)
    assert train.status == T.DEPLOYED
    assert Event.objects.filter(train=train, kind="deploytrain.status",
                                new="deploying_production").count() == 1
    assert Job.objects.filter(build=train.build, name="production").count() == 1
    assert Approval.objects.filter(train=train).count() == 2


def test_force_passes_a_production_lock_only_with_override_lock(world, people):
    _, _, manager = people
    world.green()
    trains.lock(world.repository, manager, "black friday", environment="production")
    train = trains.start_train(world.repository)
    trains.force(train, manager, "hotfix")
    wait_until(lambda: DeployTrain.objects.get(pk=train.pk).message.startswith(
        "waiting at production"), message="the train to wait at production")
    train.refresh_from_db()
    assert train.status == T.AWAITING_APPROVAL
    assert train.message == "waiting at production: production locked by rm: black friday"
    assert not Job.objects.filter(build=train.build, name="production").exists()
    trains.force(train, manager, "hotfix, really", override_lock=True)
    wait_for_train(train, T.DEPLOYED, T.FAILED, timeout=180)
    assert train.status == T.DEPLOYED


def test_approval_requests_reach_a_slack_compatible_webhook(world, people, settings):
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    posts = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):
            posts.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    settings.TRAINYARD = {**settings.TRAINYARD,
                          "SLACK_WEBHOOK_URL": f"http://127.0.0.1:{server.server_port}/hook"}
    try:
        world.commit({"b.txt": "b"}, "Bob's change", author=BOB)
        world.green()
        train = trains.start_train(world.repository)
        wait_for_train(train, T.AWAITING_APPROVAL)
        wait_until(lambda: posts, message="the webhook to be called")
    finally:
        server.shutdown()
    assert posts[0]["text"].startswith("@alice @bob Train #")
    assert f"/repos/shop/trains/{train.pk}/|train #{train.pk}>" in posts[0]["text"]


def test_why_says_what_a_branch_or_sha_waits_for(world, people):
    from pipeline.services.pulls import open_pull_request

    alice, bob, _ = people
    repository = world.repository
    world.repo.commit({"f.txt": "f"}, branch="feature/f", message="F", author=BOB)
    assert trains.why(repository, "feature/f").startswith("feature/f at ")
    assert trains.why(repository, "feature/f").endswith("has not been built: !bb feature/f builds it")
    assert trains.why(repository, "no-such-branch") == \
        "no-such-branch is neither a branch of shop nor a full SHA"
    head = world.repo.head()
    assert trains.why(repository, head) == \
        f"{head[:10]} waits for a green master build that includes it"
    world.green()
    assert trains.why(repository, "master") == (
        f"master ({head[:10]}) is a release candidate waiting for the next train (the schedule, "
        "or `train start`)")
    from pipeline.services.builds import request_build
    from tests.helpers import build_ended

    build_ended(request_build(repository, "feature/f")[0])
    open_pull_request(repository, "feature/f", user=bob)
    assert trains.why(repository, "feature/f") == "#1 is good to merge and waits for 1 more LGTM"


@pytest.mark.ssh
def test_the_production_rollout_runs_over_ssh(worker, people, tmp_path, ssh_nodes, client_key,
                                              settings):
    from nodes.models import Node
    from tests.helpers import free_port

    _, _, manager = people
    settings.TRAINYARD = {**settings.TRAINYARD, "SSH_KEY_FILE": str(client_key.path),
                          "TRAIN_BATCH_SIZE": 1}
    world = make_world(tmp_path)
    world.nodes = {name: node for name, node in world.nodes.items() if not name.startswith("prod")}
    Node.objects.filter(environment="production").delete()
    for index, sshd in enumerate(ssh_nodes, 1):
        world.nodes[f"prod-{index}"] = Node.objects.create(
            name=f"prod-{index}", environment=Node.Environment.PRODUCTION,
            transport=Node.Transport.SSH, host=sshd.host, ssh_port=sshd.port, user="root",
            host_key=sshd.host_key, app_port=free_port(), repository=world.repository,
            base_path=str(sshd.base / f"prod-{free_port()}"), off_cycle=index == 3)
    try:
        world.green()
        ship(world, manager, "the first release over ssh")
        world.commit({"b.txt": "b"}, "Bob's change", author=BOB)
        world.green()
        train = ship(world, manager, "the second: drained first")
        assert [serving(world.node(f"prod-{i}")) for i in (1, 2, 3)] == [train.head_sha] * 3
        log = "".join(Job.objects.get(build=train.build, name="production")
                      .log_chunks.values_list("text", flat=True))
        # The off-cycle node went first, alone; then one node per batch.
        assert "batch 1/3 (off-cycle): prod-3" in log and "batch 2/3: prod-1" in log
        assert "drained: drain_check exited 0" in log
    finally:
        world.stop_apps()
