"""Pull requests for the local git provider: web, API, command line."""

import io
import json

import pytest
from django.core.management import call_command

from pipeline.models import ApiToken, PullRequest
from pipeline.services.pulls import PullRequestError, open_pull_request

pytestmark = pytest.mark.django_db


def test_it_opens_a_pull_request_from_the_repository_page(client, repository, git_repo, developer):
    git_repo.commit({"x.txt": "x"}, branch="feature/x")
    client.force_login(developer)
    page = client.get("/repos/app/").content.decode()
    assert "Open pull request" in page
    response = client.post("/repos/app/pulls/open", {"branch": "feature/x", "title": "Add x"})
    pr = PullRequest.objects.get()
    assert response["Location"] == "/repos/app/pulls/1/"
    assert (pr.number, pr.title, pr.head_sha, pr.author_name) == (1, "Add x", git_repo.head("feature/x"),
                                                                  "dev")
    detail = client.get("/repos/app/pulls/1/").content.decode()
    assert "not yet good to merge" in detail and "Build branch" in detail


def test_it_numbers_pull_requests_and_does_not_open_one_twice(repository, git_repo):
    git_repo.commit({"a": "a"}, branch="feature/a")
    git_repo.commit({"b": "b"}, branch="feature/b")
    first, created = open_pull_request(repository, "feature/a")
    again, created_again = open_pull_request(repository, "feature/a")
    second, _ = open_pull_request(repository, "feature/b")
    assert (first.number, second.number) == (1, 2)
    assert created and not created_again and again == first


@pytest.mark.parametrize("branch", ["nope", "; rm -rf /", "master"])
def test_it_refuses_unknown_hostile_or_default_branches(repository, branch):
    with pytest.raises(PullRequestError):
        open_pull_request(repository, branch)


def test_viewers_may_not_open_or_close(client, repository, git_repo, viewer):
    git_repo.commit({"x.txt": "x"}, branch="feature/x")
    client.force_login(viewer)
    assert "Open pull request" not in client.get("/repos/app/").content.decode()
    client.post("/repos/app/pulls/open", {"branch": "feature/x"})
    assert not PullRequest.objects.exists()
    raw = ApiToken.issue(viewer, "t")[1]
    response = client.post("/api/repos/app/pulls", data=json.dumps({"branch": "feature/x"}),
                           content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert response.status_code == 403


@pytest.mark.django_db(transaction=True)
def test_it_opens_lists_and_closes_from_the_command_line(live_server, repository, git_repo, developer):
    git_repo.commit({"x.txt": "x"}, branch="feature/x")
    token = ApiToken.issue(developer, "cli")[1]
    common = ["--server", live_server.url, "--token", token]
    out = io.StringIO()
    call_command("pr", "open", "app", "feature/x", "--title", "Add x", *common, stdout=out)
    assert "#1  open  feature/x  not good to merge  Add x" in out.getvalue()
    out = io.StringIO()
    call_command("pr", "list", "app", *common, stdout=out)
    assert "#1" in out.getvalue()
    out = io.StringIO()
    call_command("pr", "close", "app", "1", *common, stdout=out)
    assert "closed" in out.getvalue()
    assert PullRequest.objects.get().state == "closed"
