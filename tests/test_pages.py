"""The repository and build pages say what happened, once, and stay small whatever a
build reports."""

import html
import io
import re

import pytest
from django.core.management import call_command

from pipeline.models import PullRequest, TestResult
from pipeline.views import TESTS_SHOWN
from tests.factories import BuildFactory, CommitFactory, JobFactory

pytestmark = pytest.mark.django_db


def text_of(fragment):
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", fragment)).split())


def pull_row(client, repository, number):
    page = client.get(repository.get_absolute_url()).content.decode()
    rows = re.findall(r"<tr>.*?</tr>", page, re.S)
    row = next(r for r in rows if f'href="/repos/{repository.name}/pulls/{number}/"' in r)
    return row, text_of(row)


def open_pull(repository, sha, number=1, branch="feature/x"):
    return PullRequest.objects.create(repository=repository, number=number, title="Add x",
                                      branch=branch, head_sha=sha)


def branch_build(repository, sha, status, message="", branch="feature/x"):
    commit = CommitFactory(repository=repository, sha=sha)
    return BuildFactory(commit=commit, branch=branch, status=status, message=message)


# The repository page's pull requests ----------------------------------------------------

SHA = "a" * 40


def test_it_says_a_pull_request_whose_build_is_red_is_failing_and_why(client, repository):
    open_pull(repository, SHA)
    build = branch_build(repository, SHA, "failed", "unit failed")
    row, text = pull_row(client, repository, 1)
    assert "not yet" not in text.lower()
    assert "failed" in text and "unit failed" in text
    assert f'href="/builds/{build.pk}/"' in row


@pytest.mark.parametrize("status", ["error", "cancelled"])
def test_it_says_an_ended_build_that_did_not_pass_for_what_it_is(client, repository, status):
    open_pull(repository, SHA)
    branch_build(repository, SHA, status, "a job could not run")
    _, text = pull_row(client, repository, 1)
    assert "not yet" not in text.lower() and status in text


@pytest.mark.parametrize("status", ["queued", "running"])
def test_it_says_not_yet_while_the_head_is_building(client, repository, status):
    open_pull(repository, SHA)
    build = branch_build(repository, SHA, status)
    row, text = pull_row(client, repository, 1)
    assert "not yet" in text.lower() and "building" in text
    assert f'href="/builds/{build.pk}/"' in row


def test_it_says_not_yet_while_the_head_has_no_build(client, repository):
    open_pull(repository, SHA)
    branch_build(repository, "b" * 40, "failed", "unit failed")  # an earlier head's build
    _, text = pull_row(client, repository, 1)
    assert "not yet" in text.lower() and "head not built" in text
    assert "unit failed" not in text


def test_it_says_good_to_merge_when_the_head_passed(client, repository):
    open_pull(repository, SHA)
    branch_build(repository, SHA, "passed", "all checks passed")
    _, text = pull_row(client, repository, 1)
    assert "good to merge" in text and "not yet" not in text.lower()


def test_the_pull_request_page_agrees(client, repository):
    open_pull(repository, SHA)
    branch_build(repository, SHA, "failed", "unit failed")
    page = text_of(client.get("/repos/app/pulls/1/").content.decode())
    assert "not yet" not in page.lower() and "failed: not good to merge" in page


# A build's message, once --------------------------------------------------------------

@pytest.mark.django_db(transaction=True)
def test_it_names_what_failed_once(client, worker, live_server, repository, git_repo, developer):
    from pipeline.models import ApiToken, Build

    git_repo.commit({"trainyard.yml": "checks:\n  lint: python3 -c pass\n"
                     "  unit: python3 -c \"raise SystemExit(1)\"\n"}, branch="feature/red")
    token = ApiToken.issue(developer, "cli")[1]
    out = io.StringIO()
    with pytest.raises(SystemExit):
        call_command("bb", "app", "feature/red", "--wait", "--server", live_server.url,
                     "--token", token, "--poll", "0.1", stdout=out)
    build = Build.objects.get()
    assert (build.status, build.message) == ("failed", "unit failed")
    assert out.getvalue().splitlines()[-1] == f"build #{build.pk} failed: unit failed"
    page = text_of(client.get(build.get_absolute_url()).content.decode())
    radiator = text_of(client.get("/radiators/app/").content.decode())
    for text in (page, radiator):
        assert "unit failed" in text and "failed: failed" not in text and "failed: unit" not in text


# Large JUnit reports ------------------------------------------------------------------

def add_results(job, passed, failed=(), errors=(), skipped=0):
    rows = [TestResult(job=job, classname="tests.test_big", name=f"test_pass_{i}", outcome="passed")
            for i in range(passed)]
    rows += [TestResult(job=job, classname="tests.test_big", name=f"test_skip_{i}", outcome="skipped")
             for i in range(skipped)]
    # Failing ones last, as a report of thousands would have them somewhere far down.
    rows += [TestResult(job=job, classname="tests.test_big", name=name, outcome="failed",
                        message=f"AssertionError in {name}") for name in failed]
    rows += [TestResult(job=job, classname="tests.test_big", name=name, outcome="error",
                        message=f"ImportError in {name}") for name in errors]
    TestResult.objects.bulk_create(rows)


def test_it_shows_failed_tests_first_and_at_most_a_page_of_results(client, repository):
    build = branch_build(repository, SHA, "failed", "unit failed")
    job = JobFactory(build=build, name="unit", status="failed")
    failed = [f"test_broken_{i}" for i in range(3)]
    add_results(job, passed=TESTS_SHOWN + 50, failed=failed, errors=["test_cannot_import"],
                skipped=7)
    page = client.get(build.get_absolute_url()).content.decode()
    rows = re.findall(r'<li class="test (\w+)">(.*?)</li>', page, re.S)
    assert len(rows) == TESTS_SHOWN
    assert [outcome for outcome, _ in rows[:4]] == ["failed", "failed", "failed", "error"]
    assert {outcome for outcome, _ in rows[4:]} == {"passed"}
    assert "AssertionError in test_broken_0" in page
    summary = text_of(page)
    total = TESTS_SHOWN + 50 + 3 + 1 + 7
    assert f"{total} tests: 3 failed, 1 error, 7 skipped, {TESTS_SHOWN + 50} passed" in summary
    assert f"Showing {TESTS_SHOWN} of {total}, failing ones first" in summary
    assert f'href="/builds/{build.pk}/jobs/{job.pk}/tests/"' in page


def test_it_lists_every_result_page_by_page(client, repository):
    build = branch_build(repository, SHA, "failed", "unit failed")
    job = JobFactory(build=build, name="unit", status="failed")
    add_results(job, passed=TESTS_SHOWN + 10, failed=["test_broken"])
    url = f"/builds/{build.pk}/jobs/{job.pk}/tests/"
    first = client.get(url).content.decode()
    rows = re.findall(r'<li class="test (\w+)">', first)
    assert len(rows) == TESTS_SHOWN and rows[0] == "failed"
    assert "page 1 of 2" in text_of(first) and '?page=2' in first
    second = client.get(url + "?page=2").content.decode()
    assert len(re.findall(r'<li class="test (\w+)">', second)) == 11
    only_failing = client.get(url + "?outcome=failed").content.decode()
    assert re.findall(r'<li class="test (\w+)">', only_failing) == ["failed"]


@pytest.mark.parametrize(("query", "shown"), [("?page=999", "page 2 of 2"), ("?page=x", "page 1 of 2"),
                                              ("?outcome=bogus", "page 1 of 2")])
def test_it_answers_odd_result_queries_with_a_page_not_an_error(client, repository, query, shown):
    build = branch_build(repository, SHA, "failed", "unit failed")
    job = JobFactory(build=build, name="unit", status="failed")
    add_results(job, passed=TESTS_SHOWN + 1)
    response = client.get(f"/builds/{build.pk}/jobs/{job.pk}/tests/{query}")
    assert response.status_code == 200
    assert shown in text_of(response.content.decode())


def test_it_does_not_show_another_builds_job_under_this_build(client, repository):
    build = branch_build(repository, SHA, "failed")
    other = JobFactory(build=branch_build(repository, "c" * 40, "failed", branch="feature/y"))
    assert client.get(f"/builds/{build.pk}/jobs/{other.pk}/tests/").status_code == 404


def test_a_job_without_a_report_shows_no_tests(client, repository):
    build = branch_build(repository, SHA, "passed")
    JobFactory(build=build, name="lint", status="passed")
    page = client.get(build.get_absolute_url()).content.decode()
    assert 'class="tests"' not in page


def test_a_team_member_who_is_not_staff_logs_in_and_lands_on_the_wall(client, db):
    """The admin's login is for staff: team members (an author approving a train from the
    wall) log in through Trainyard's own page and come back where they were."""
    from tests.factories import RepositoryFactory, UserFactory

    RepositoryFactory(name="demo")
    UserFactory(username="alice", password="pw-for-alice-1")
    wall = client.get("/radiators/demo/").content.decode()
    assert 'href="/accounts/login/?next=/radiators/demo/"' in wall
    page = client.get("/accounts/login/?next=/radiators/demo/")
    assert page.status_code == 200 and 'name="next" value="/radiators/demo/"' in page.content.decode()
    refused = client.post("/accounts/login/", {"username": "alice", "password": "wrong",
                                              "next": "/radiators/demo/"})
    assert "do not match" in refused.content.decode()
    response = client.post("/accounts/login/", {"username": "alice", "password": "pw-for-alice-1",
                                               "next": "/radiators/demo/"})
    assert (response.status_code, response["Location"]) == (302, "/radiators/demo/")
    assert 'data-username="alice"' in client.get("/radiators/demo/").content.decode()
    assert client.post("/accounts/logout/").status_code == 302
    assert "data-username" not in client.get("/radiators/demo/").content.decode()
