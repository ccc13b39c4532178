"""The build and repository pages in headless Chromium, and the helpers other browser
tests share (log_in, screenshot_path). Writes docs/screenshots/build.png and
repository.png when TRAINYARD_SCREENSHOTS=1 (elsewhere to a temp folder, so runs leave
no changes). The wall itself: test_wall_live_browser.py and test_wall_controls_browser.py.
"""

import hashlib
import os
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from pipeline.models import Build, Job, LogChunk, PullRequest, TestResult
from tests.csp import csp_violations, watch_csp
from tests.factories import BuildFactory, CommitFactory, JobFactory, RepositoryFactory, UserFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


SECONDS = 1000
LIVE = 30 * SECONDS  # a real build through a real worker: generous, never slept through
SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"


@pytest.fixture(autouse=True)
def _no_csp_violations(page):
    """Every page here, live updates and all, runs under the Content-Security-Policy."""
    seen = watch_csp(page)
    yield
    assert csp_violations(page, seen) == []


# How it looks --------------------------------------------------------------------------------

def screenshot_path(tmp_path, name):
    """docs/screenshots/ when TRAINYARD_SCREENSHOTS=1, a temp folder otherwise."""
    folder = SCREENSHOTS if os.environ.get("TRAINYARD_SCREENSHOTS") == "1" else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


PEOPLE = ["alice", "bob", "carol", "dave", "erin", "frank"]
CHECKS = ["lint", "unit", "integration", "smoke"]

# (branch, who, minutes ago, seconds it ran (None: still running), status, job statuses, message)
HISTORY = [
    ("master", "alice", 190, 192, "passed", "pppp", "all checks passed"),
    ("feature/search-filters", "bob", 150, 201, "passed", "pppp", "all checks passed"),
    ("fix/timezone-offsets", "carol", 120, 143, "failed", "ppfp", "integration failed"),
    ("feature/payment-retry", "dave", 95, 75, "error", "ppep", "a job could not run"),
    ("chore/bump-django", "alice", 80, 31, "cancelled", "pccc", "cancelled"),
    ("master", "bob", 62, 188, "passed", "pppp", "all checks passed"),
    ("feature/checkout-redesign-with-a-long-branch-name", "erin", 45, 96, "failed", "pfpp",
     "unit failed"),
    ("feature/dark-mode", "frank", 31, 176, "passed", "pppp", "all checks passed"),
    ("hotfix/session-expiry", "carol", 18, 140, "passed", "pppp", "all checks passed"),
    ("fix/flaky-login-test", "dave", 4, None, "running", "prrq", ""),
    ("feature/api-rate-limits", "bob", 2, None, "running", "ppr", ""),
    ("feature/onboarding-tour", "alice", 0.3, None, "queued", "", ""),
]
JOB_STATUS = {"p": "passed", "f": "failed", "e": "error", "c": "cancelled", "r": "running",
              "q": "queued"}


def make_history(repository):
    """A morning's worth of builds in every state, with believable times."""
    now = timezone.now()
    users = {name: UserFactory(username=name) for name in PEOPLE}
    builds = []
    for branch, who, ago, ran, status, jobs, message in HISTORY:
        created = now - timedelta(minutes=ago)
        started = created + timedelta(seconds=4) if status != "queued" else None
        finished = started + timedelta(seconds=ran) if ran else None
        sha = hashlib.sha1(f"{branch}{ago}".encode()).hexdigest()
        subject = branch.rsplit("/", 1)[-1].replace("-", " ").capitalize()
        commit = CommitFactory(repository=repository, sha=sha, author_name=who.capitalize(),
                               message=subject)
        build = BuildFactory(commit=commit, branch=branch,
                             status=status, requested_by=users[who], message=message)
        Build.objects.filter(pk=build.pk).update(created_at=created, started_at=started,
                                                 finished_at=finished)
        for name, code in zip(CHECKS, jobs, strict=False):
            JobFactory(build=build, name=name, status=JOB_STATUS[code],
                       command=["python", "-m", "pytest", f"tests/{name}"])
        builds.append(build)
    return builds


def log_in(page, asgi_server, user):
    from django.conf import settings
    from django.test import Client

    client = Client()
    client.force_login(user)
    page.context.add_cookies([{"name": settings.SESSION_COOKIE_NAME, "url": asgi_server.url,
                               "value": client.cookies[settings.SESSION_COOKIE_NAME].value}])


def test_it_styles_the_build_and_repository_pages(page, asgi_server, developer, tmp_path):
    demo = RepositoryFactory(name="demo", clone_url="/srv/git/demo.git")
    builds = make_history(demo)
    failed = builds[6]
    add_logs_and_results(failed)
    log_in(page, asgi_server, developer)
    page.set_viewport_size({"width": 1440, "height": 900})

    page.goto(f"{asgi_server.url}/builds/{failed.pk}/")
    expect(page.locator("#build-status")).to_have_text("failed")
    expect(page.locator("#build-status")).to_have_css("color", "rgb(185, 28, 28)")
    expect(page.locator("section.job.status-failed pre.log")).to_contain_text("AssertionError")
    page.locator("details.tests").first.evaluate("el => el.open = true")
    page.screenshot(path=screenshot_path(tmp_path, "build.png"), full_page=True,
                    animations="disabled")

    for number, build in enumerate([builds[1], builds[6], builds[10]], start=41):
        PullRequest.objects.create(repository=demo, number=number, branch=build.branch,
                                   title=build.commit.message, author_name=build.commit.author_name,
                                   head_sha=build.sha)
    page.goto(f"{asgi_server.url}/repos/demo/")
    expect(page.locator(".build-form button").first).to_have_text("Build branch")
    expect(page.locator("table.builds").last.locator("tbody tr")).to_have_count(len(builds))
    expect(page.locator("table.builds .badge.failed").first).to_have_css(
        "background-color", "rgb(253, 226, 226)")
    page.screenshot(path=screenshot_path(tmp_path, "repository.png"), full_page=True,
                    animations="disabled")


def add_logs_and_results(build):
    for job in build.jobs.all():
        failed = job.status == Job.Status.FAILED
        Job.objects.filter(pk=job.pk).update(
            exit_code=1 if failed else 0, timeout=900,
            message="exited with 1; 4 tests, 1 failed" if failed else "exited with 0")
        text = f"$ python -m pytest tests/{job.name}\n"
        if failed:
            text += ("tests/unit/test_cart.py ...F\n\n=================== FAILURES ===================\n"
                     "____________ test_total_includes_shipping ____________\n\n"
                     "    def test_total_includes_shipping():\n"
                     ">       assert cart.total() == Decimal('24.90')\n"
                     "E       AssertionError: assert Decimal('19.90') == Decimal('24.90')\n\n"
                     "tests/unit/test_cart.py:41: AssertionError\n"
                     "1 failed, 3 passed in 0.42s\n\n[trainyard: exited with 1 after 3.1s]\n")
            for name, outcome in [("test_add_item", "passed"), ("test_remove_item", "passed"),
                                  ("test_empty_cart", "passed"),
                                  ("test_total_includes_shipping", "failed")]:
                TestResult.objects.create(
                    job=job, suite="unit", classname="tests.unit.test_cart", name=name,
                    outcome=outcome, duration=0.01,
                    message="AssertionError: assert Decimal('19.90') == Decimal('24.90')"
                    if outcome == "failed" else "")
        else:
            text += f"{job.name}: all good\n\n[trainyard: exited with 0 after 1.2s]\n"
        LogChunk.objects.create(job=job, seq=0, text=text)
