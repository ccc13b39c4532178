"""The train page in headless Chromium, with a real train (real git repository, the
worker, local nodes whose apps run): an author approves with the button, a veto without
a reason is refused, and force asks for confirmation before anything happens. Writes
docs/screenshots/train.png when TRAINYARD_SCREENSHOTS=1."""

import pytest
from playwright.sync_api import expect

from tests.csp import csp_violations, watch_csp
from tests.test_radiator_browser import log_in, screenshot_path
from tests.trainworld import wait_for_train

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
LIVE = 30_000


@pytest.fixture(autouse=True)
def _no_csp_violations(page):
    """Buttons, the veto form and the confirmation page work without inline script."""
    seen = watch_csp(page)
    yield
    assert csp_violations(page, seen) == []


def test_an_author_approves_and_a_reasonless_veto_is_refused(page, asgi_server, people,
                                                             waiting_train, tmp_path):
    alice, bob, _ = people
    url = f"{asgi_server.url}{waiting_train.get_absolute_url()}"
    log_in(page, asgi_server, alice)
    page.goto(url)
    expect(page.locator("#train-status")).to_have_text("awaiting approval")
    expect(page.locator("#force")).to_have_count(0)  # not a release manager
    page.locator("#approve").click()
    expect(page.locator(".messages")).to_contain_text(f"alice says good to train #{waiting_train.pk}")
    expect(page.locator('tr[data-author="alice"] .badge')).to_have_text("good")
    expect(page.locator('tr[data-author="bob"] .badge')).to_have_text("waiting")

    page.context.clear_cookies()
    log_in(page, asgi_server, bob)
    page.goto(url)
    page.locator("#veto").click()  # empty: the browser will not send it
    assert page.locator("#veto-reason").evaluate("el => !el.validity.valid")
    page.fill("#veto-reason", "   ")  # not empty to the browser; no reason to the server
    page.locator("#veto").click()
    expect(page.locator(".messages")).to_contain_text("A veto needs a reason")
    assert not waiting_train.approvals.filter(user=bob).exists()
    expect(page.locator("#train-status")).to_have_text("awaiting approval")

    page.set_viewport_size({"width": 1440, "height": 900})
    page.goto(url)  # without the flash message
    page.screenshot(path=screenshot_path(tmp_path, "train.png"), full_page=True,
                    animations="disabled")


def test_force_needs_its_confirmation(page, asgi_server, people, waiting_train):
    _, _, manager = people
    log_in(page, asgi_server, manager)
    page.goto(f"{asgi_server.url}{waiting_train.get_absolute_url()}")
    page.locator("#force").click()
    expect(page.locator("h1")).to_contain_text(f"Force train #{waiting_train.pk} to production?")
    waiting_train.refresh_from_db()
    assert waiting_train.status == "awaiting_approval" and not waiting_train.forced_by_id
    page.fill("#force-reason", "the authors are at the offsite; checked it in staging")
    page.locator("#confirm-force").click()
    expect(page.locator(".messages")).to_contain_text(f"rm forced train #{waiting_train.pk}")
    wait_for_train(waiting_train, "deployed", "failed", timeout=180)
    assert waiting_train.status == "deployed", waiting_train.message
    assert waiting_train.forced_by == manager
    page.reload()
    expect(page.locator("#train-status")).to_have_text("deployed")
    expect(page.locator('[data-environment="production"] .badge').first).to_have_text("deployed")
