"""Every door to the deploy train: chat-ops (`!good`, `!force`, …), the API, `manage.py
train`, and the web pages. One executor (`chatops.run`) behind all of them, permissions
checked there once.

The doors are tested here against the service's interface: `service` replaces the
functions of `pipeline.services.trains` with recording fakes, so these tests prove what
each door sends and shows, not what the train does (tests/test_trains.py proves that).
The tests at the end ("With the real service") go through the real service.
"""

from datetime import timedelta
from pathlib import Path
from unittest import mock

import pytest
from django.core.exceptions import PermissionDenied
from django.utils import timezone

from pipeline import chatops, permissions
from pipeline.models import ApiToken, DeployTrain, Lock
from pipeline.services import trains
from tests.factories import UserFactory

ROOT = Path(__file__).resolve().parent.parent
HEAD = "4f2a9c1e7b3d5a6f8e0c2b4d6a8f0e1c3b5d7a9f"
BASE = "9b1d3f5a7c9e1b3d5f7a9c1e3b5d7f9a1c3e5b7d"
ENVIRONMENTS = ["staging", "preview", "preprod"]


# People and a train ------------------------------------------------------------------------

@pytest.fixture
def alice(db):
    return UserFactory(username="alice")


@pytest.fixture
def bob(db):
    return UserFactory(username="bob")


@pytest.fixture
def release_manager(db):
    return UserFactory(username="rm", perms=["pipeline.release_manager"])


@pytest.fixture
def train(repository):
    return DeployTrain.objects.create(repository=repository, head_sha=HEAD, base_sha=BASE,
                                      status=DeployTrain.Status.AWAITING_APPROVAL,
                                      message="waiting for the authors' answers")


def fake_status(train, *, job_id=None, lock=None):
    """What `trains.status(train)` returns, with the authors' answers read from the
    Approval rows (a fake `answer` writes them, so a page shows the answer it got)."""
    answers = {a.user.get_username(): a for a in train.approvals.select_related("user")}

    def author(name):
        given = answers.get(name)
        return {"username": name, "answer": given.verdict if given else None,
                "reason": given.reason if given else "",
                "answered_at": given.created_at.isoformat() if given else None}

    ports = iter(range(9101, 9200))
    return {
        "id": train.pk, "repository": train.repository.name, "kind": train.kind,
        "status": train.status, "head_sha": train.head_sha, "base_sha": train.base_sha,
        "environment": train.environment, "message": train.message,
        "url": train.get_absolute_url(), "created_at": train.created_at.isoformat(),
        "finished_at": None, "forced_by": None, "force_reason": "",
        "environments": [
            {"name": env, "status": "passed",
             "deploy": {"id": job_id, "build_id": None, "status": "passed", "message": "",
                        "url": ""},
             "acceptance": {"id": job_id, "build_id": None, "status": "passed",
                            "message": "14 tests passed", "url": ""},
             "nodes": [{"name": f"{env}-1", "url": f"http://127.0.0.1:{next(ports)}/",
                        "sha": train.head_sha, "health": "healthy"}]}
            for env in ENVIRONMENTS],
        "production": {"status": "pending", "nodes": [
            {"name": f"web-{n}", "url": f"http://127.0.0.1:{next(ports)}/", "sha": BASE,
             "health": "healthy", "off_cycle": n == 1} for n in (1, 2, 3)]},
        "authors": [author("alice"), author("bob")],
        "unmapped_authors": [{"name": "Carl Contractor", "email": "carl@agency.example"}],
        "commits": [
            {"sha": "1" * 40, "subject": "Say hello on the home page", "author_name": "Alice",
             "author": "alice", "pull_request": 1, "is_revert": False, "is_merge": False},
            {"sha": "2" * 40, "subject": "Merge pull request #1 from feature/hello",
             "author_name": "Alice", "author": "alice", "pull_request": 1, "is_revert": False,
             "is_merge": True},
            {"sha": "3" * 40, "subject": 'Revert "Cache the session"', "author_name": "Bob",
             "author": "bob", "pull_request": None, "is_revert": True, "is_merge": False},
            {"sha": "4" * 40, "subject": "Fix the footer", "author_name": "Carl Contractor",
             "author": None, "pull_request": None, "is_revert": False, "is_merge": False},
        ],
        "lock": lock,
    }


@pytest.fixture
def service(monkeypatch):
    """The train service's functions as recording fakes that behave like the real ones
    for the doors: `answer` records an Approval, `current_train` finds the newest train."""
    from pipeline.models import Approval

    def answer(train, user, verdict, reason="", *, via="web"):
        return Approval.objects.update_or_create(train=train, user=user, defaults={
            "verdict": verdict, "reason": reason, "via": via})[0]

    def start(repository, **kwargs):
        return DeployTrain.objects.create(repository=repository, head_sha=HEAD, base_sha=BASE)

    def rollback(repository, user, reason, *, via="web"):
        return DeployTrain.objects.create(repository=repository, head_sha=BASE, base_sha=HEAD,
                                          kind=DeployTrain.Kind.ROLLBACK)

    def lock(repository, user, reason, *, environment="", expires_at=None, via="web"):
        return Lock.objects.create(repository=repository, locked_by=user, reason=reason,
                                   environment=environment, expires_at=expires_at)

    def unlock(repository, user, *, environment="", via="web"):
        held = repository.locks.get(environment=environment, released_at__isnull=True)
        Lock.objects.filter(pk=held.pk).update(released_at=timezone.now(), released_by=user)
        held.refresh_from_db()
        return held

    fakes = {
        "answer": mock.Mock(side_effect=answer),
        "force": mock.Mock(return_value=None),
        "start_train": mock.Mock(side_effect=start),
        "start_rollback": mock.Mock(side_effect=rollback),
        "current_train": mock.Mock(
            side_effect=lambda repo: repo.trains.active().first() or repo.trains.first()),
        "lock": mock.Mock(side_effect=lock),
        "unlock": mock.Mock(side_effect=unlock),
        "why": mock.Mock(return_value="feature/x waits for its checks: build #3 is running"),
        "status": mock.Mock(side_effect=fake_status),
    }
    for name, fake in fakes.items():
        monkeypatch.setattr(trains, name, fake)
    return mock.Mock(**fakes)


# Chat-ops: the parser ---------------------------------------------------------------------

def test_it_splits_reasons_from_options():
    assert chatops.split_options(["db", "is", "--override-veto", "slow"], "u",
                                 flags=("--override-veto",)) == (["db", "is", "slow"],
                                                                 {"--override-veto": True})
    assert chatops.split_options(["--expires", "2h", "x"], "u", values=("--expires",)) == (
        ["x"], {"--expires": "2h"})
    assert chatops.split_options(["--expires=30m"], "u", values=("--expires",)) == (
        [], {"--expires": "30m"})
    # After `--` a reason may start with dashes.
    assert chatops.split_options(["--", "--not-a-flag"], "u") == (["--not-a-flag"], {})


@pytest.mark.parametrize("args", [["--override-everything", "x"], ["--expires"],
                                  ["--override-veto=yes"]])
def test_an_unknown_or_incomplete_option_is_a_usage_error_not_a_reason(args):
    with pytest.raises(chatops.CommandError, match="usage: !force"):
        chatops.split_options(args, chatops.FORCE_USAGE, flags=("--override-veto",),
                              values=("--expires",))


def test_it_reads_expiry_durations():
    now = timezone.now()
    assert chatops.parse_expiry("2h", now) == now + timedelta(hours=2)
    assert chatops.parse_expiry("1d12h", now) == now + timedelta(days=1, hours=12)
    assert chatops.parse_expiry("45M", now) == now + timedelta(minutes=45)
    for bad in ("", "2 hours", "tomorrow", "0h", "-1h"):
        with pytest.raises(chatops.CommandError, match="--expires"):
            chatops.parse_expiry(bad, now)


# Chat-ops: each command, its permission, its refusals --------------------------------------

def run(repository, text, user, **kwargs):
    return chatops.execute(repository, text, user=user, via="test", **kwargs)


@pytest.mark.django_db
def test_good_and_bad_answer_the_active_train(repository, train, alice, bob, service):
    outcome = run(repository, "!good", alice)
    service.answer.assert_called_once_with(train, alice, "good", via="test")
    assert outcome.train == train
    assert outcome.message == (f"alice says good to train #{train.pk} (4f2a9c1e7b); the train "
                               "is awaiting_approval")
    outcome = run(repository, "!bad 'the footer is broken' on mobile", bob)
    service.answer.assert_called_with(train, bob, "bad", "the footer is broken on mobile",
                                      via="test")
    assert outcome.message.endswith("the footer is broken on mobile")


@pytest.mark.django_db
def test_a_veto_needs_a_reason(repository, train, bob, service):
    with pytest.raises(chatops.CommandError, match=r"usage: !bad <reason> \(a reason is required\)"):
        run(repository, "!bad", bob)
    with pytest.raises(chatops.CommandError, match="usage: !good"):
        run(repository, "!good everything", bob)
    service.answer.assert_not_called()


@pytest.mark.django_db
def test_answers_need_an_active_train(repository, alice, service):
    with pytest.raises(chatops.CommandError, match="app has no deploy train yet: start one with !train"):
        run(repository, "!good", alice)
    ended = DeployTrain.objects.create(repository=repository, head_sha=HEAD, status="deployed")
    with pytest.raises(chatops.CommandError,
                       match=f"app has no active deploy train: train #{ended.pk} ended deployed"):
        run(repository, "!bad too late", alice)
    service.answer.assert_not_called()


@pytest.mark.django_db
def test_anyone_logged_in_may_try_to_answer_and_the_service_decides(repository, train, viewer,
                                                                    service):
    from django.contrib.auth.models import AnonymousUser

    with pytest.raises(PermissionDenied, match="anonymous may not approve"):
        run(repository, "!good", AnonymousUser())
    service.answer.side_effect = trains.TrainError("viewer is not an author of train #1")
    with pytest.raises(chatops.CommandError, match="viewer is not an author of train #1") as refused:
        run(repository, "!good", viewer)
    assert refused.value.status == 400


@pytest.mark.django_db
@pytest.mark.parametrize("text, action", [
    ("!train", "start_train"), ("!force because", "force"), ("!rollback because", "rollback"),
    ("!lock because", "lock"), ("!unlock", "lock")])
def test_release_manager_commands_are_refused_to_others(repository, train, developer, service,
                                                        text, action):
    with pytest.raises(PermissionDenied, match=f"dev may not {action}"):
        run(repository, text, developer)
    for name in ("start_train", "force", "start_rollback", "lock", "unlock"):
        getattr(service, name).assert_not_called()


@pytest.mark.django_db
def test_force_passes_its_overrides(repository, train, release_manager, service):
    outcome = run(repository, "!force 'hotfix for the outage' --override-lock", release_manager)
    service.force.assert_called_once_with(train, release_manager, "hotfix for the outage",
                                          override_veto=False, override_lock=True, via="test")
    assert outcome.message.startswith(f"rm forced train #{train.pk} (4f2a9c1e7b): hotfix for")
    with pytest.raises(chatops.CommandError, match="usage: !force <reason>"):
        run(repository, "!force --override-veto", release_manager)


@pytest.mark.django_db
def test_force_reaches_a_vetoed_train_and_the_service_keeps_the_veto(repository, train,
                                                                     release_manager, service):
    DeployTrain.objects.filter(pk=train.pk).update(status="vetoed")
    run(repository, "!force 'seen it, fine' --override-veto", release_manager)
    service.force.assert_called_once_with(train, release_manager, "seen it, fine",
                                          override_veto=True, override_lock=False, via="test")


@pytest.mark.django_db
def test_train_rollback_status_and_why(repository, release_manager, viewer, service):
    outcome = run(repository, "!status", viewer)
    assert outcome.message == "app has no deploy train yet" and outcome.train is None
    started = run(repository, "!train", release_manager)
    service.start_train.assert_called_once_with(repository, user=release_manager, via="test")
    assert started.created and started.message == (
        f"started app train #{started.train.pk} with 4f2a9c1e7b")
    status = run(repository, "!status", viewer)
    assert status.data["train"]["id"] == started.train.pk
    assert status.message == f"app train #{started.train.pk} scheduled at 4f2a9c1e7b"
    DeployTrain.objects.filter(pk=started.train.pk).update(status="deployed")
    back = run(repository, "!rollback 'checkout errors since 10:02'", release_manager)
    service.start_rollback.assert_called_once_with(repository, release_manager,
                                                   "checkout errors since 10:02", via="test")
    assert back.message == f"started rollback train #{back.train.pk}: production goes back to 9b1d3f5a7c"
    assert run(repository, "!why feature/x", viewer).message == (
        "feature/x waits for its checks: build #3 is running")
    service.why.assert_called_once_with(repository, "feature/x")


@pytest.mark.django_db
def test_status_names_whom_an_awaiting_train_waits_for(repository, train, alice, service):
    run(repository, "!good", alice)
    assert run(repository, "!status", alice).message == (
        f"app train #{train.pk} awaiting_approval at 4f2a9c1e7b: waiting for the authors' "
        "answers (waiting for bob)")


@pytest.mark.django_db
def test_lock_reads_an_environment_a_reason_and_an_expiry(repository, release_manager, service):
    outcome = run(repository, "!lock staging 'database upgrade' --expires 2h", release_manager)
    args, kwargs = service.lock.call_args
    assert args == (repository, release_manager, "database upgrade")
    assert kwargs["environment"] == "staging"
    assert timedelta(minutes=119) < kwargs["expires_at"] - timezone.now() <= timedelta(hours=2)
    assert outcome.message.startswith("rm locked app staging until ")
    assert outcome.data["lock"]["environment"] == "staging"
    # A lone word is the reason, not an environment; a reason may start with one.
    run(repository, "!lock preview", release_manager)
    assert service.lock.call_args.kwargs["environment"] == ""
    assert service.lock.call_args.args[2] == "preview"
    with pytest.raises(chatops.CommandError, match="no environment 'moon'; lockable: staging, "
                                                   "preview, preprod, production"):
        run(repository, "!lock --environment moon because", release_manager)
    for reasonless in ("!lock", "!lock --environment staging --expires 2h"):
        with pytest.raises(chatops.CommandError, match="a reason is required"):
            run(repository, reasonless, release_manager)


@pytest.mark.django_db
def test_unlock_names_the_environment_or_the_whole_repository(repository, release_manager,
                                                             service):
    run(repository, "!lock staging 'db upgrade'", release_manager)
    outcome = run(repository, "!unlock staging", release_manager)
    service.unlock.assert_called_once_with(repository, release_manager, environment="staging",
                                           via="test")
    assert outcome.message == "rm unlocked app staging"
    assert outcome.data["lock"]["released_by"] == "rm"
    service.unlock.side_effect = trains.TrainError("app is not locked")
    with pytest.raises(chatops.CommandError, match="app is not locked"):
        run(repository, "!unlock", release_manager)
    assert service.unlock.call_args.kwargs["environment"] == ""


@pytest.mark.django_db
def test_acting_for_another_never_grants_more_than_the_actor_holds(repository, train, alice,
                                                                   release_manager, service):
    helper = UserFactory(username="helper", perms=["pipeline.act_for_others"])
    run(repository, "!good", alice, actor=helper)  # anyone logged in may try to answer
    service.answer.assert_called_once_with(train, alice, "good", via="test")
    with pytest.raises(PermissionDenied, match="helper may not force"):
        run(repository, "!force because", release_manager, actor=helper)
    service.force.assert_not_called()


@pytest.mark.django_db
def test_a_button_names_its_train_and_it_must_be_the_repositorys(repository, train, alice,
                                                                 service):
    from tests.factories import RepositoryFactory

    other = RepositoryFactory(name="other")
    with pytest.raises(chatops.CommandError, match=f"train #{train.pk} is not other's"):
        chatops.run(other, "good", [], user=alice, via="test", train=train)
    service.answer.assert_not_called()


@pytest.mark.django_db
def test_the_new_actions_are_a_release_managers(release_manager, developer, admin_user, viewer):
    for action in ("start_train", "force", "rollback", "lock"):
        assert permissions.can(release_manager, action) and permissions.can(admin_user, action)
        assert not permissions.can(developer, action)
    assert permissions.can(viewer, "approve")  # the service knows who its authors are


# The API ------------------------------------------------------------------------------------

def api(client, method, url, body=None, user=None):
    """`method url` with `user`'s API token (none: anonymous); the response."""
    headers = {"HTTP_AUTHORIZATION": f"Bearer {ApiToken.issue(user, 'test')[1]}"} if user else {}
    if method == "GET":
        return client.get(url, **headers)
    import json

    return client.post(url, data=json.dumps(body or {}), content_type="application/json",
                       **headers)


@pytest.mark.django_db
def test_it_lists_trains_and_shows_one_as_its_status(client, repository, train, service):
    listed = api(client, "GET", "/api/repos/app/trains")
    assert listed.status_code == 200
    assert [t["id"] for t in listed.json()["trains"]] == [train.pk]
    current = api(client, "GET", "/api/repos/app/trains/current").json()
    assert current == api(client, "GET", f"/api/trains/{train.pk}").json()
    assert set(current) >= {"status", "head_sha", "environments", "production", "authors",
                            "unmapped_authors", "commits", "lock"}
    assert current["environments"][0]["nodes"][0]["url"] == "http://127.0.0.1:9101/"


@pytest.mark.django_db
def test_it_names_what_is_missing(client, repository, service):
    assert api(client, "GET", "/api/repos/app/trains/current").json() == {
        "error": "app has no deploy train yet"}
    missing = api(client, "GET", "/api/trains/999")
    assert (missing.status_code, missing.json()) == (404, {"error": "no deploy train #999"})
    nowhere = api(client, "GET", "/api/repos/nosuchrepo/trains")
    assert nowhere.status_code == 404 and "no repository named 'nosuchrepo'" in nowhere.json()["error"]


@pytest.mark.django_db
def test_it_starts_a_train_for_a_release_manager_only(client, repository, release_manager,
                                                      developer, service):
    refused = api(client, "POST", "/api/repos/app/trains", user=developer)
    assert (refused.status_code, refused.json()) == (403, {"error": "dev may not start_train"})
    anonymous = api(client, "POST", "/api/repos/app/trains")
    assert anonymous.status_code == 401
    started = api(client, "POST", "/api/repos/app/trains", user=release_manager)
    assert started.status_code == 201
    body = started.json()
    assert body["message"] == f"started app train #{body['train']['id']} with 4f2a9c1e7b"
    assert body["train"]["url"] == f"/repos/app/trains/{body['train']['id']}/"
    service.start_train.assert_called_once_with(repository, user=release_manager, via="api")


@pytest.mark.django_db
def test_authors_approve_and_veto_through_the_api(client, repository, train, alice, bob, service):
    approved = api(client, "POST", f"/api/trains/{train.pk}/approve", user=alice)
    assert approved.status_code == 200
    assert approved.json()["train"]["authors"][0] == {
        "username": "alice", "answer": "good", "reason": "",
        "answered_at": train.approvals.get().created_at.isoformat()}
    service.answer.assert_called_once_with(train, alice, "good", via="api")
    reasonless = api(client, "POST", f"/api/trains/{train.pk}/veto", {"reason": " "}, user=bob)
    assert (reasonless.status_code, reasonless.json()) == (
        400, {"error": "'reason' is a required string"})
    vetoed = api(client, "POST", f"/api/trains/{train.pk}/veto", {"reason": "footer broken"},
                 user=bob)
    assert vetoed.status_code == 200
    assert vetoed.json()["message"] == f"bob vetoed train #{train.pk} (4f2a9c1e7b): footer broken"
    service.answer.assert_called_with(train, bob, "bad", "footer broken", via="api")


@pytest.mark.django_db
def test_the_service_refusal_is_a_400_with_its_sentence(client, repository, train, viewer,
                                                        service):
    service.answer.side_effect = trains.TrainError("viewer is not an author of this train")
    refused = api(client, "POST", f"/api/trains/{train.pk}/approve", user=viewer)
    assert (refused.status_code, refused.json()) == (
        400, {"error": "viewer is not an author of this train"})


@pytest.mark.django_db
def test_force_takes_its_overrides_as_booleans(client, repository, train, release_manager, alice,
                                               service):
    url = f"/api/trains/{train.pk}/force"
    refused = api(client, "POST", url, {"reason": "hotfix"}, user=alice)
    assert (refused.status_code, refused.json()) == (403, {"error": "alice may not force"})
    wrong = api(client, "POST", url, {"reason": "hotfix", "override_veto": "yes"},
                user=release_manager)
    assert (wrong.status_code, wrong.json()) == (400, {"error": "'override_veto' is true or false"})
    unknown = api(client, "POST", url, {"reason": "x", "override_all": True}, user=release_manager)
    assert unknown.status_code == 400 and "unknown field(s) override_all" in unknown.json()["error"]
    forced = api(client, "POST", url, {"reason": "--hotfix for the outage", "override_veto": True},
                 user=release_manager)
    assert forced.status_code == 200, forced.json()
    service.force.assert_called_once_with(train, release_manager, "--hotfix for the outage",
                                          override_veto=True, override_lock=False, via="api")
    assert api(client, "POST", f"/api/trains/{train.pk}/explode", user=release_manager).json() == {
        "error": "no train action 'explode'; use approve, veto, force"}


@pytest.mark.django_db
def test_rollback_locks_and_unlock(client, repository, release_manager, developer, service):
    refused = api(client, "POST", "/api/repos/app/rollback", {"reason": "errors"}, user=developer)
    assert (refused.status_code, refused.json()) == (403, {"error": "dev may not rollback"})
    back = api(client, "POST", "/api/repos/app/rollback", {"reason": "errors"},
               user=release_manager)
    assert back.status_code == 201 and back.json()["train"]["kind"] == "rollback"
    locked = api(client, "POST", "/api/repos/app/locks",
                 {"reason": "staging db upgrade", "environment": "staging", "expires": "30m"},
                 user=release_manager)
    assert locked.status_code == 201
    lock = locked.json()["lock"]
    assert (lock["environment"], lock["reason"], lock["locked_by"]) == (
        "staging", "staging db upgrade", "rm")
    # "staging …" as the reason of a whole-repository lock stays a reason.
    assert service.lock.call_args.args[2] == "staging db upgrade"
    listed = api(client, "GET", "/api/repos/app/locks").json()["locks"]
    assert [each["environment"] for each in listed] == ["staging"]
    moon = api(client, "POST", "/api/repos/app/locks", {"reason": "x", "environment": "moon"},
               user=release_manager)
    assert moon.status_code == 400 and moon.json()["error"].startswith("no environment 'moon'")
    unlocked = api(client, "POST", "/api/repos/app/locks/unlock", {"environment": "staging"},
                   user=release_manager)
    assert unlocked.json()["message"] == "rm unlocked app staging"
    assert api(client, "GET", "/api/repos/app/locks").json() == {"locks": []}


@pytest.mark.django_db
def test_every_command_works_through_the_commands_endpoint(client, repository, train, alice,
                                                          release_manager, service):
    def command(text, user, **extra):
        return api(client, "POST", "/api/repos/app/commands", {"text": text, **extra}, user=user)

    assert command("!good", alice).status_code == 200
    assert command("!force 'hotfix' --override-lock", release_manager).status_code == 200
    service.force.assert_called_once_with(train, release_manager, "hotfix", override_veto=False,
                                          override_lock=True, via="api")
    status = command("!status", alice).json()
    assert status["train"]["id"] == train.pk and status["message"].startswith(f"app train #{train.pk}")
    assert command("!why master", alice).json() == {
        "message": "feature/x waits for its checks: build #3 is running"}
    assert command("!lock preprod 'pen test' --expires 1h", release_manager).status_code == 201
    assert command("!unlock preprod", release_manager).status_code == 200
    assert command("!rollback", release_manager).json() == {
        "error": "usage: !rollback <reason> (a reason is required)"}
    DeployTrain.objects.filter(pk=train.pk).update(status="deployed")
    assert command("!train", release_manager).status_code == 201
    assert command("!bad x", alice, extra="no").json()["error"].startswith("unknown field(s) extra")


@pytest.mark.django_db
def test_as_acts_for_another_only_with_the_grant(client, repository, train, alice, developer,
                                                 admin_user, service):
    url = f"/api/trains/{train.pk}/approve"
    refused = api(client, "POST", url, {"as": "alice"}, user=developer)
    assert refused.status_code == 403 and "may not act for another user" in refused.json()["error"]
    probing = api(client, "POST", url, {"as": "nobody"}, user=developer)
    assert probing.status_code == 403  # no hint whether a name exists
    missing = api(client, "POST", url, {"as": "nobody"}, user=admin_user)
    assert missing.json() == {"error": "no active user named 'nobody'"}
    approved = api(client, "POST", url, {"as": "alice"}, user=admin_user)
    assert approved.status_code == 200
    service.answer.assert_called_once_with(train, alice, "good", via="api")
    by_text = api(client, "POST", "/api/repos/app/commands", {"text": "!good", "as": "alice"},
                  user=developer)
    assert by_text.status_code == 403


# The command line ---------------------------------------------------------------------------

def train_cli(*args, server, user=None):
    import tempfile

    from tests.test_cli import cli

    # A var directory of its own: a developer's var/api-token must not stand in for "none".
    with tempfile.TemporaryDirectory() as var_dir:
        return cli("train", *args, server=server, var_dir=var_dir,
                   token=ApiToken.issue(user, "cli")[1] if user else "")


@pytest.mark.django_db(transaction=True)
def test_train_status_prints_state_head_nodes_and_answers(live_server, repository, train, alice,
                                                          service):
    run(repository, "!good", alice)
    shown = train_cli("status", "app", server=live_server.url)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines() == [
        f"app train #{train.pk}: awaiting_approval (waiting for the authors' answers)",
        f"head {HEAD}  (production ran {BASE})",
        "",
        "ENVIRONMENT  NODE               STATUS   SHA         URL",
        "staging                         passed",
        "             staging-1          healthy  4f2a9c1e7b  http://127.0.0.1:9101/",
        "             acceptance         passed               14 tests passed",
        "preview                         passed",
        "             preview-1          healthy  4f2a9c1e7b  http://127.0.0.1:9102/",
        "             acceptance         passed               14 tests passed",
        "preprod                         passed",
        "             preprod-1          healthy  4f2a9c1e7b  http://127.0.0.1:9103/",
        "             acceptance         passed               14 tests passed",
        "production                      pending",
        "             web-1 (off-cycle)  healthy  9b1d3f5a7c  http://127.0.0.1:9104/",
        "             web-2              healthy  9b1d3f5a7c  http://127.0.0.1:9105/",
        "             web-3              healthy  9b1d3f5a7c  http://127.0.0.1:9106/",
        "",
        "AUTHOR  ANSWER   REASON",
        "alice   good",
        "bob     waiting",
        "not asked (no user with their e-mail): Carl Contractor <carl@agency.example>",
    ]


@pytest.mark.django_db(transaction=True)
def test_train_commands_answer_with_exit_codes_like_pr(live_server, repository, train, alice,
                                                       developer, admin_user, release_manager,
                                                       service):
    server = live_server.url
    approved = train_cli("approve", "app", "--as", "alice", server=server, user=admin_user)
    assert (approved.returncode, approved.stdout.strip()) == (
        0, f"alice says good to train #{train.pk} (4f2a9c1e7b); the train is awaiting_approval")
    service.answer.assert_called_once_with(train, alice, "good", via="api")
    not_for_others = train_cli("approve", "app", "--as", "alice", server=server, user=developer)
    assert not_for_others.returncode == 1
    assert "dev may not act for another user" in not_for_others.stderr
    reasonless = train_cli("veto", "app", server=server, user=alice)
    assert (reasonless.returncode, reasonless.stderr.strip()) == (2, "train veto needs --reason")
    refused = train_cli("force", "app", "--reason", "hotfix", server=server, user=developer)
    assert (refused.returncode, refused.stderr.strip()) == (1, "dev may not force")
    forced = train_cli("force", "app", "--reason", "hotfix", "--override-lock",
                       "--train", str(train.pk), server=server, user=release_manager)
    assert forced.returncode == 0, forced.stderr
    service.force.assert_called_once_with(train, release_manager, "hotfix", override_veto=False,
                                          override_lock=True, via="api")
    locked = train_cli("lock", "app", "--environment", "preprod", "--reason", "pen test",
                       "--expires", "2h", server=server, user=release_manager)
    assert locked.returncode == 0 and locked.stdout.startswith("rm locked app preprod until ")
    unlocked = train_cli("unlock", "app", "--environment", "preprod", server=server,
                         user=release_manager)
    assert (unlocked.returncode, unlocked.stdout.strip()) == (0, "rm unlocked app preprod")
    usage = train_cli("launch", "app", server=server, user=release_manager)
    assert usage.returncode == 2 and "invalid choice: 'launch'" in usage.stderr
    missing = train_cli("status", "nosuchrepo", server=server)
    assert (missing.returncode, missing.stderr.strip()) == (
        1, "no repository named 'nosuchrepo'; known: app")


@pytest.mark.django_db(transaction=True)
def test_train_start_and_rollback_print_the_new_trains_page(live_server, repository,
                                                            release_manager, service):
    started = train_cli("start", "app", server=live_server.url, user=release_manager)
    assert started.returncode == 0, started.stderr
    first = DeployTrain.objects.get()
    assert started.stdout.splitlines() == [f"started app train #{first.pk} with 4f2a9c1e7b",
                                           f"{live_server.url}/repos/app/trains/{first.pk}/"]
    service.start_train.side_effect = trains.TrainError(
        f"app has an active train (#{first.pk}): one at a time")
    again = train_cli("start", "app", server=live_server.url, user=release_manager)
    assert (again.returncode, again.stderr.strip()) == (
        1, f"app has an active train (#{first.pk}): one at a time")
    DeployTrain.objects.filter(pk=first.pk).update(status="deployed")
    back = train_cli("rollback", "app", "--reason", "errors", server=live_server.url,
                     user=release_manager)
    assert back.returncode == 0, back.stderr
    assert back.stdout.splitlines()[0].startswith("started rollback train #")


@pytest.mark.django_db(transaction=True)
def test_train_status_escapes_terminal_controls(live_server, repository, train, service):
    hostile = "\x1b]0;owned\x07\x1b[2J\u202e"
    DeployTrain.objects.filter(pk=train.pk).update(message=f"acceptance said {hostile}")
    shown = train_cli("status", "app", server=live_server.url)
    assert "acceptance said \\x1b]0;owned\\x07\\x1b[2J\\u202e" in shown.stdout
    assert not any(ch in shown.stdout + shown.stderr for ch in "\x1b\x07\u202e")


# The web pages -------------------------------------------------------------------------------

@pytest.fixture
def acceptance_job(repository):
    from tests.factories import BuildFactory, CommitFactory, JobFactory

    build = BuildFactory(commit=CommitFactory(repository=repository, sha=HEAD), branch="master")
    return JobFactory(build=build, name="acceptance-staging", status="passed")


def page_of(client, user, url):
    if user:
        client.force_login(user)
    response = client.get(url)
    assert response.status_code == 200
    return response.content.decode()


@pytest.mark.django_db
def test_the_train_page_shows_commits_authors_environments_and_production(
        client, repository, train, alice, service, acceptance_job):
    from pipeline.models import PullRequest

    PullRequest.objects.create(repository=repository, number=1, branch="feature/hello",
                               title="Hello", head_sha="1" * 40)
    service.status.side_effect = lambda t: fake_status(t, job_id=acceptance_job.pk)
    html = page_of(client, None, f"/repos/app/trains/{train.pk}/")
    for shown in (HEAD, "waiting for the authors&#x27; answers", "Say hello on the home page",
                  "Carl Contractor", "not asked: no user has this e-mail", "staging-1",
                  "http://127.0.0.1:9101/", "14 tests passed", "off-cycle", "web-3",
                  '<span class="mark revert">revert</span>', '<span class="mark merge">merge</span>',
                  '<a href="/repos/app/pulls/1/">#1</a>',
                  f'<a href="/builds/{acceptance_job.build_id}/#job-{acceptance_job.pk}">'):
        assert shown in html, shown
    assert 'id="approve"' not in html and 'id="force"' not in html  # anonymous: no buttons


@pytest.mark.django_db
def test_buttons_show_only_to_those_allowed(client, repository, train, alice, viewer,
                                            release_manager, service):
    url = f"/repos/app/trains/{train.pk}/"
    as_author = page_of(client, alice, url)
    assert 'id="approve"' in as_author and 'id="veto"' in as_author
    assert 'id="force"' not in as_author and 'id="rollback"' not in as_author
    as_viewer = page_of(client, viewer, url)
    assert 'id="approve"' not in as_viewer and 'id="veto"' not in as_viewer
    as_manager = page_of(client, release_manager, url)
    assert all(f'id="{button}"' in as_manager for button in ("approve", "veto", "force", "rollback"))
    DeployTrain.objects.filter(pk=train.pk).update(status="deployed")
    ended = page_of(client, alice, url)
    assert 'id="approve"' not in ended and 'id="veto"' not in ended


@pytest.mark.django_db
def test_the_buttons_go_through_chat_ops(client, repository, train, alice, viewer, service):
    client.force_login(alice)
    response = client.post(f"/repos/app/trains/{train.pk}/approve", follow=True)
    service.answer.assert_called_once_with(train, alice, "good", via="web")
    assert f"alice says good to train #{train.pk}" in response.content.decode()
    refused = client.post(f"/repos/app/trains/{train.pk}/veto", {"reason": "   "}, follow=True)
    assert "A veto needs a reason" in refused.content.decode()
    assert service.answer.call_count == 1
    client.post(f"/repos/app/trains/{train.pk}/veto", {"reason": "footer broken"})
    service.answer.assert_called_with(train, alice, "bad", "footer broken", via="web")
    client.force_login(viewer)
    service.answer.side_effect = trains.TrainError("viewer is not one of this train's authors")
    shown = client.post(f"/repos/app/trains/{train.pk}/approve", follow=True).content.decode()
    assert "viewer is not one of this train&#x27;s authors" in shown


@pytest.mark.django_db
def test_force_and_rollback_ask_first(client, repository, train, alice, release_manager, service):
    url = f"/repos/app/trains/{train.pk}/force"
    client.force_login(alice)
    assert client.get(url).status_code == 403
    client.force_login(release_manager)
    asking = client.get(url).content.decode()
    assert f"Force train #{train.pk} to production?" in asking and 'id="confirm-force"' in asking
    unconfirmed = client.post(url, {"reason": "hotfix"})
    assert unconfirmed.status_code == 200 and "needs a reason and your confirmation" in \
        unconfirmed.content.decode()
    service.force.assert_not_called()
    done = client.post(url, {"reason": "hotfix", "confirmed": "yes", "override-lock": "1"})
    assert done.status_code == 302 and done.url == train.get_absolute_url()
    service.force.assert_called_once_with(train, release_manager, "hotfix", override_veto=False,
                                          override_lock=True, via="web")
    DeployTrain.objects.filter(pk=train.pk).update(status="deployed")
    assert 'id="confirm-rollback"' in client.get("/repos/app/rollback").content.decode()
    client.post("/repos/app/rollback", {"reason": "errors"})
    service.start_rollback.assert_not_called()
    back = client.post("/repos/app/rollback", {"reason": "errors", "confirmed": "yes"})
    rollback = DeployTrain.objects.get(kind="rollback")
    assert back.url == rollback.get_absolute_url()
    service.start_rollback.assert_called_once_with(repository, release_manager, "errors", via="web")


@pytest.mark.django_db
def test_locks_start_and_the_trains_page(client, repository, release_manager, developer, service):
    client.force_login(developer)
    listing = page_of(client, developer, "/repos/app/trains/")
    assert "Nothing is locked." in listing and 'id="lock-reason"' not in listing
    client.post("/repos/app/locks", {"environment": "staging", "reason": "db upgrade"})
    service.lock.assert_not_called()
    client.force_login(release_manager)
    client.post("/repos/app/locks", {"environment": "staging", "reason": "db upgrade",
                                     "expires": "2h"})
    assert service.lock.call_args.kwargs["environment"] == "staging"
    listing = page_of(client, release_manager, "/repos/app/trains/")
    assert "db upgrade" in listing and 'id="start-train"' in listing
    client.post("/repos/app/unlock", {"environment": "staging"})
    service.unlock.assert_called_once_with(repository, release_manager, environment="staging",
                                           via="web")
    started = client.post("/repos/app/trains/start")
    assert started.url == DeployTrain.objects.get().get_absolute_url()
    repository_page = page_of(client, release_manager, "/repos/app/")
    assert f'href="{DeployTrain.objects.get().get_absolute_url()}" id="current-train"' in repository_page


@pytest.mark.django_db
def test_the_inbox_lists_newest_first_and_marks_read(client, alice, bob, train):
    from pipeline.models import Notification

    older = Notification.objects.create(user=alice, train=train, kind="approval",
                                        message="Train #1 waits for your answer",
                                        url=train.get_absolute_url())
    newer = Notification.objects.create(user=alice, kind="reminder", message="Still waiting")
    Notification.objects.create(user=bob, kind="approval", message="Bob's own")
    assert client.get("/inbox/").status_code == 302  # log in first
    html = page_of(client, alice, "/inbox/")
    assert html.index("Still waiting") < html.index("Train #1 waits") and "Bob&#x27;s own" not in html
    assert html.count('<span class="badge running">new</span>') == 2
    assert all(n.read_at for n in Notification.objects.filter(pk__in=[older.pk, newer.pk]))
    assert "badge running\">new" not in page_of(client, alice, "/inbox/")


# With the real service: a train through every door ----------------------------------------

@pytest.fixture
def shop(worker, tmp_path):
    """tests/test_trains.py's world: a real repository by alice and bob, local nodes for
    staging and production (3), its apps stopped at the end."""
    from tests.trainworld import make_world

    world = make_world(tmp_path)
    yield world
    world.stop_apps()


@pytest.fixture
def shop_people(transactional_db):
    return (UserFactory(username="alice", email="alice@example.com"),
            UserFactory(username="bob", email="bob@example.com"),
            UserFactory(username="rm", email="rm@example.com", perms=["pipeline.release_manager"]))


def test_a_real_train_through_the_api_the_command_line_and_chat_ops(
        shop_people, shop, live_server, admin_user, client):
    from tests.trainworld import BOB, serving, wait_for_train

    alice, bob, manager = shop_people
    shop.commit({"bye.txt": "bye\n"}, "Say goodbye", author=BOB)
    head = shop.green().sha
    started = api(client, "POST", "/api/repos/shop/trains", user=manager)
    assert started.status_code == 201, started.json()
    train = DeployTrain.objects.get(pk=started.json()["train"]["id"])
    wait_for_train(train, "awaiting_approval", "failed")
    assert train.status == "awaiting_approval", train.message

    shown = train_cli("status", "shop", server=live_server.url)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[:2] == [f"shop train #{train.pk}: awaiting_approval ({train.message})",
                         f"head {head}"]
    staging = shop.node("staging-1")
    assert any(line.split()[:4] == ["staging-1", "healthy", head[:10], staging.url]
               for line in lines), shown.stdout
    assert any(line.split()[:2] == ["prod-1", "(off-cycle)"] for line in lines), shown.stdout
    assert [line.split() for line in lines if line.split()[:1] in (["alice"], ["bob"])] == [
        ["alice", "waiting"], ["bob", "waiting"]]

    with pytest.raises(chatops.CommandError, match="only the train's authors"):
        chatops.execute(shop.repository, "!good", user=UserFactory(username="mallory"), via="chat")
    assert chatops.execute(shop.repository, "!good", user=bob, via="chat").train == train
    approved = train_cli("approve", "shop", "--as", "alice", server=live_server.url,
                         user=admin_user)
    assert approved.returncode == 0, approved.stderr
    wait_for_train(train, "deployed", "failed", timeout=180)
    assert train.status == "deployed", train.message
    assert [serving(shop.node(f"prod-{i}")) for i in (1, 2, 3)] == [head] * 3
    final = api(client, "GET", f"/api/trains/{train.pk}").json()
    assert [(a["username"], a["answer"]) for a in final["authors"]] == [
        ("alice", "good"), ("bob", "good")]
    assert final["production"]["status"] == "deployed"
    assert chatops.execute(shop.repository, "!status", user=bob, via="chat").message.startswith(
        f"shop train #{train.pk} deployed at {head[:10]}")


def test_real_refusals_reach_every_door_as_sentences(shop_people, shop, client, live_server):
    alice, bob, manager = shop_people
    nothing = api(client, "POST", "/api/repos/shop/trains", user=manager)
    assert nothing.status_code == 400 and "no new green candidate" in nothing.json()["error"]
    locked = train_cli("lock", "shop", "--environment", "staging", "--reason", "db upgrade",
                       server=live_server.url, user=manager)
    assert locked.returncode == 0, locked.stderr
    twice = train_cli("lock", "shop", "--environment", "staging", "--reason", "again",
                      server=live_server.url, user=manager)
    assert twice.returncode == 1 and twice.stderr.strip()
    assert api(client, "GET", "/api/repos/shop/locks").json()["locks"][0]["reason"] == "db upgrade"
    unlocked = train_cli("unlock", "shop", "--environment", "staging", server=live_server.url,
                         user=manager)
    assert (unlocked.returncode, unlocked.stdout.strip()) == (0, "rm unlocked shop staging")
    why = api(client, "POST", "/api/repos/shop/commands", {"text": "!why master"}, user=alice)
    assert why.status_code == 200 and why.json()["message"]
