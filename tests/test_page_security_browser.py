"""The Content-Security-Policy in headless Chromium: it is enforced (an injected inline
script is refused and reported), and the repository page and the admin's pages, with
their scripts, load and work without a single violation. The build page and the radiator
are watched the same way while their live updates run (their own modules)."""

import re

import pytest
from django_celery_beat.models import CrontabSchedule
from playwright.sync_api import expect

from pipeline.models import PullRequest
from tests.csp import csp_violations, watch_csp
from tests.factories import BuildFactory, CommitFactory, JobFactory, RepositoryFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def csp(page):
    seen = watch_csp(page)
    yield seen
    assert csp_violations(page, seen) == []


def test_it_enforces_the_policy_in_the_browser(page, asgi_server, db):
    seen = watch_csp(page)
    response = page.goto(f"{asgi_server.url}/")
    assert "script-src 'self'" in response.headers["content-security-policy"]
    page.evaluate("""() => {
        const script = document.createElement("script");
        script.textContent = "window.__inlineRan = true";
        document.head.append(script);
    }""")
    assert page.evaluate("window.__inlineRan") is None
    violations = csp_violations(page, seen)
    assert any("script-src" in v for v in violations), violations


def test_the_repository_page_loads_styled_and_clean(page, asgi_server, csp):
    repo = RepositoryFactory(name="shop", clone_url="https://x-access-token:ghs_secret@git.example/shop.git")
    build = BuildFactory(commit=CommitFactory(repository=repo), status="failed", message="unit failed")
    JobFactory(build=build, name="unit", status="failed")
    PullRequest.objects.create(repository=repo, number=7, title="Cart", branch=build.branch,
                               head_sha=build.sha)
    page.goto(f"{asgi_server.url}/repos/shop/")
    expect(page.locator("h1")).to_have_text("shop")
    expect(page.locator("table.pulls .badge.failed")).to_have_css("background-color", "rgb(253, 226, 226)")
    expect(page.locator("body")).not_to_contain_text("ghs_secret")


def test_the_admin_pages_load_and_their_scripts_work(page, asgi_server, admin_user, csp):
    RepositoryFactory(name="shop")
    CrontabSchedule.objects.create(minute="0", hour="*")
    page.goto(f"{asgi_server.url}/admin/login/")
    page.fill("#id_username", "boss")
    page.fill("#id_password", "pw-boss-123")
    page.click("input[type=submit]")  # form-action 'self' lets the login post
    expect(page.locator("#site-name")).to_be_visible()
    page.goto(f"{asgi_server.url}/admin/pipeline/repository/")
    expect(page.locator("#result_list")).to_contain_text("shop")
    page.goto(f"{asgi_server.url}/admin/pipeline/repository/add/")
    # The inline formset's "Add another" row is made by the admin's inlines.js.
    expect(page.locator(".add-row a").first).to_be_visible()
    page.goto(f"{asgi_server.url}/admin/nodes/node/add/")
    expect(page.locator("#id_name")).to_be_visible()
    page.goto(f"{asgi_server.url}/admin/django_celery_beat/periodictask/add/")
    page.select_option("#id_crontab", index=1)
    expect(page.locator(".field-crontab .help")).to_contain_text(re.compile(r"Translation: \S"))
    expect(page.locator(".field-crontab_translation")).to_be_hidden()
