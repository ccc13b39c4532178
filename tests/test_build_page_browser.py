"""The build page in headless Chromium: a running job's output appears as it is written,
and statuses change, without a reload."""

import pytest
from playwright.sync_api import expect

from pipeline.models import Job
from pipeline.services.builds import request_build
from tests.csp import csp_violations, watch_csp
from tests.helpers import Gate, off_main_thread, wait_until

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
LIVE = 30_000


@pytest.fixture(autouse=True)
def _no_csp_violations(page):
    """The page follows the build under the Content-Security-Policy, without a violation."""
    seen = watch_csp(page)
    yield
    assert csp_violations(page, seen) == []


def test_it_shows_a_jobs_output_while_it_runs(page, asgi_server, worker, repository, git_repo):
    gate = Gate()
    git_repo.commit({"slow.py": gate.script(before="first line", after="last line"),
                     "trainyard.yml": "checks:\n  slow: python3 slow.py\n"},
                    branch="feature/slow")
    build, _ = off_main_thread(request_build, repository, "feature/slow", via="test")
    wait_until(lambda: Job.objects.filter(build=build, status="running").exists(),
               message="the job to start")
    page.goto(f"{asgi_server.url}/builds/{build.pk}/")
    page.evaluate("window.__marker = 1")
    job = page.locator("section.job")
    expect(job.locator("[data-role=log]")).to_contain_text("first line", timeout=LIVE)
    expect(job.locator("[data-role=status]")).to_have_text("running")
    gate.open()
    expect(job.locator("[data-role=status]")).to_have_text("passed", timeout=LIVE)
    expect(job.locator("[data-role=log]")).to_contain_text("last line", timeout=LIVE)
    expect(page.locator("#build-status")).to_have_text("passed", timeout=LIVE)
    assert page.evaluate("window.__marker") == 1  # followed live, never reloaded
