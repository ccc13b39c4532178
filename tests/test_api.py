"""The HTTP API and the `bb` command line client that uses it."""

import io
import json

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from pipeline.models import ApiToken, Build

pytestmark = pytest.mark.django_db


def post_json(client, url, body, **headers):
    return client.post(url, data=json.dumps(body), content_type="application/json", **headers)


@pytest.fixture
def token(developer):
    return ApiToken.issue(developer, "test")[1]


def test_it_queues_a_build_with_a_bearer_token(client, repository, token, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as callbacks:
        response = post_json(client, "/api/repos/app/builds", {"branch": "master"},
                             HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["build"]["status"] == "queued" and body["build"]["branch"] == "master"
    assert Build.objects.get().requested_by.username == "dev"
    assert len(callbacks) >= 1  # the enqueue waits for the commit


def test_it_returns_the_running_build_for_a_duplicate_request(client, repository, token):
    first = post_json(client, "/api/repos/app/builds", {"branch": "master"},
                      HTTP_AUTHORIZATION=f"Bearer {token}")
    second = post_json(client, "/api/repos/app/builds", {"branch": "master"},
                       HTTP_AUTHORIZATION=f"Bearer {token}")
    assert (first.status_code, second.status_code) == (201, 200)
    assert first.json()["build"]["id"] == second.json()["build"]["id"]
    assert "already building" in second.json()["message"]


@pytest.mark.parametrize("body", [{"branch": "; rm -rf /"}, {"branch": "-x"}, {"branch": ""},
                                  {"branch": 3}, {}, {"branch": "nope"}])
def test_it_answers_bad_input_with_a_clear_400(client, repository, token, body):
    response = post_json(client, "/api/repos/app/builds", body, HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 400
    assert response.json()["error"]
    assert not Build.objects.exists()


def test_it_rejects_a_body_that_is_not_json(client, repository, token):
    response = client.post("/api/repos/app/builds", data=b"\xff{", content_type="application/json",
                           HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 400


def test_it_refuses_anonymous_and_unknown_tokens(client, repository):
    assert post_json(client, "/api/repos/app/builds", {"branch": "master"}).status_code in (401, 403)
    response = post_json(client, "/api/repos/app/builds", {"branch": "master"},
                         HTTP_AUTHORIZATION="Bearer ty_forged")
    assert response.status_code == 401
    assert not Build.objects.exists()


def test_it_refuses_a_user_without_the_build_permission(client, repository, viewer):
    raw = ApiToken.issue(viewer, "viewer")[1]
    response = post_json(client, "/api/repos/app/builds", {"branch": "master"},
                         HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert response.status_code == 403
    assert "may not build" in response.json()["error"]


def test_it_requires_csrf_for_session_posts(repository, developer):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(developer)
    response = post_json(client, "/api/repos/app/builds", {"branch": "master"})
    assert response.status_code == 403
    assert not Build.objects.exists()


def test_it_runs_chat_commands_through_the_same_door(client, repository, token):
    response = post_json(client, "/api/repos/app/commands", {"text": "!bb master"},
                         HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 201
    response = post_json(client, "/api/repos/app/commands", {"text": "!deploy everything"},
                         HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 400 and "unknown command" in response.json()["error"]


def test_it_stores_only_a_hash_of_tokens(developer):
    token, raw = ApiToken.issue(developer, "x")
    assert raw not in (token.key_hash, token.prefix) and len(token.key_hash) == 64


# The web button ------------------------------------------------------------------------

def test_it_builds_from_the_repository_page_button(client, repository, developer):
    client.force_login(developer)
    page = client.get("/repos/app/")
    assert b"Build branch" in page.content
    response = client.post("/repos/app/build", {"branch": "master"})
    build = Build.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/builds/{build.pk}/"


def test_it_hides_the_button_from_viewers_and_refuses_their_post(client, repository, viewer):
    client.force_login(viewer)
    assert b"Build branch" not in client.get("/repos/app/").content
    client.post("/repos/app/build", {"branch": "master"})
    assert not Build.objects.exists()


def test_it_shows_a_build_page_with_jobs_and_logs(client, repository, developer):
    from tests.factories import BuildFactory, JobFactory

    job = JobFactory(build=BuildFactory(repository=repository, commit__repository=repository),
                     name="unit", status="failed", message="exited 1")
    job.log_chunks.create(seq=0, text="AssertionError: boom")
    page = client.get(f"/builds/{job.build_id}/")
    assert page.status_code == 200
    assert b"AssertionError: boom" in page.content and b"exited 1" in page.content
    log = client.get(f"/api/jobs/{job.pk}/log?after=-1").json()
    assert log["chunks"] == [{"seq": 0, "text": "AssertionError: boom"}]


# The command line ----------------------------------------------------------------------

@pytest.mark.django_db(transaction=True)
def test_it_follows_a_build_from_the_command_line(worker, live_server, repository, git_repo, token):
    git_repo.commit({"trainyard.yml": "checks:\n  unit: python3 -c \"raise SystemExit(1)\"\n"},
                    branch="feature/red")
    out = io.StringIO()
    call_command("bb", "app", "master", "--wait", "--server", live_server.url, "--token", token,
                 "--poll", "0.1", stdout=out)
    assert "build #" in out.getvalue() and "passed" in out.getvalue()
    with pytest.raises(SystemExit) as exited:
        call_command("bb", "app", "feature/red", "--wait", "--server", live_server.url,
                     "--token", token, "--poll", "0.1", stdout=io.StringIO())
    assert exited.value.code == 1


@pytest.mark.django_db(transaction=True)
def test_it_exits_2_with_the_reason_when_the_server_refuses(live_server, repository, token):
    with pytest.raises(CommandError, match="does not exist") as caught:
        call_command("bb", "app", "no-such-branch", "--server", live_server.url, "--token", token)
    assert caught.value.returncode == 2


def test_it_exits_2_when_no_server_answers(repository):
    with pytest.raises(CommandError, match="cannot reach Trainyard") as caught:
        call_command("bb", "app", "master", "--server", "http://127.0.0.1:9", "--token", "x")
    assert caught.value.returncode == 2


@pytest.mark.django_db(transaction=True)
def test_it_answers_503_and_leaves_nothing_half_made_when_the_broker_is_away(
        client, repository, token, monkeypatch):
    from kombu.exceptions import OperationalError

    from pipeline.services import builds

    def broker_down(build_id):
        raise OperationalError("Error 111 connecting to 127.0.0.1:6399. Connection refused.")

    monkeypatch.setattr(builds, "_enqueue_build", broker_down)
    response = post_json(client, "/api/repos/app/builds", {"branch": "master"},
                         HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 503
    assert "broker is unreachable" in response.json()["error"]
    build = Build.objects.get()
    assert build.status == "error" and "could not be queued" in build.message
    # Asking again once the broker is back makes a new build: nothing says "already building".
    monkeypatch.setattr(builds, "_enqueue_build", lambda build_id: None)
    again = post_json(client, "/api/repos/app/builds", {"branch": "master"},
                      HTTP_AUTHORIZATION=f"Bearer {token}")
    assert again.status_code == 201


# Hostile bodies ------------------------------------------------------------------------

NESTED = b'{"branch": ' + b"[" * 30_000 + b"]" * 30_000 + b"}"  # under the 64 KiB limit


def test_it_answers_a_deeply_nested_body_with_a_clear_400(client, repository, token):
    client.raise_request_exception = False  # a 500 must show as a 500, not as the exception
    for url in ("/api/repos/app/pulls", "/api/repos/app/builds", "/api/repos/app/commands"):
        response = client.post(url, data=NESTED, content_type="application/json",
                               HTTP_AUTHORIZATION=f"Bearer {token}")
        assert response.status_code == 400, (url, response.status_code)
        assert "nested more than" in response.json()["error"]


def test_it_refuses_anonymous_and_unpermitted_bodies_before_reading_them(client, repository, viewer,
                                                                          monkeypatch):
    from pipeline import api

    def read_anyway(request):
        raise AssertionError("the body was read before the caller was authorised")

    monkeypatch.setattr(api, "_json_body", read_anyway)
    client.raise_request_exception = False
    anonymous = client.post("/api/repos/app/pulls", data=NESTED, content_type="application/json")
    assert anonymous.status_code == 401
    assert "API token" in anonymous.json()["error"]
    raw = ApiToken.issue(viewer, "viewer")[1]
    unpermitted = client.post("/api/repos/app/pulls", data=NESTED, content_type="application/json",
                              HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert unpermitted.status_code == 403 and "may not open_pull_request" in unpermitted.json()["error"]


def test_it_refuses_a_body_over_the_limit_without_reading_it(client, repository, token):
    response = client.post("/api/repos/app/builds", data=b" " * (65 * 1024),
                           content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 413 and "64 KiB" in response.json()["error"]


def test_unknown_things_are_named_with_what_exists(client, repository, token):
    auth = {"HTTP_AUTHORIZATION": f"Bearer {token}"}
    missing = post_json(client, "/api/repos/nosuchrepo/builds", {"branch": "master"}, **auth)
    assert missing.status_code == 404
    assert missing.json()["error"] == "no repository named 'nosuchrepo'; known: app"
    odd = client.get("/api/repos/no such repo/pulls", **auth)
    assert odd.status_code == 404 and "no repository named 'no such repo'" in odd.json()["error"]
    pull = post_json(client, "/api/repos/app/pulls/99/close", {}, **auth)
    assert pull.status_code == 404
    assert pull.json()["error"] == "no pull request #99 in app; it has no open pull requests"
    nowhere = client.get("/api/nothing-here", **auth)
    assert nowhere.status_code == 404 and "no API endpoint" in nowhere.json()["error"]


# Tokens in the admin -------------------------------------------------------------------

def test_it_creates_a_token_in_the_admin_and_shows_its_key_once(admin_client, admin_user, client,
                                                                  repository):
    import re

    keys = []
    for name in ("laptop", "ci"):  # the second one used to be a 500 (two empty hashes)
        response = admin_client.post("/admin/pipeline/apitoken/add/",
                                     {"user": admin_user.pk, "name": name})
        assert response.status_code == 200, response.status_code
        page = response.content.decode()
        assert "shown once" in page
        keys.append(re.search(r"ty_[A-Za-z0-9_-]{40,}", page).group(0))
    assert keys[0] != keys[1]
    for key in keys:
        stored = ApiToken.objects.get(key_hash=ApiToken.hash(key))
        assert key not in (stored.key_hash, stored.prefix) and key.startswith(stored.prefix)
        assert client.get("/api/repos/app/builds", HTTP_AUTHORIZATION=f"Bearer {key}").status_code == 200
    change = admin_client.get(f"/admin/pipeline/apitoken/{stored.pk}/change/").content.decode()
    assert keys[1] not in change and stored.key_hash not in change
