"""The wall in headless Chromium with a real train (real git repository, the worker, local
nodes whose apps run): a viewer who is not signed in sees the panels and no controls, and
nothing scrolls at 1920x1080; the command box runs !why; a veto without a reason is
refused; the authors approve from the wall and the train moves on to production.
Writes docs/radiator.png when TRAINYARD_SCREENSHOTS=1 (a temp folder otherwise)."""

import os
import re
from pathlib import Path

import pytest
from playwright.sync_api import expect

from nodes.models import Node, NodeLease
from pipeline.models import Build, Job, TestResult
from radiators import rollups
from radiators.models import Claim
from tests.csp import csp_violations, watch_csp
from tests.factories import CommitFactory
from tests.trainworld import wait_for_train

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
LIVE = 30_000
DOCS = Path(__file__).resolve().parent.parent / "docs"


@pytest.fixture(autouse=True)
def _no_csp_violations(page):
    """The wall, its dialog and its controls work without inline script or style."""
    seen = watch_csp(page)
    yield
    assert csp_violations(page, seen) == []


def log_in(page, asgi_server, user):
    from django.conf import settings
    from django.test import Client

    client = Client()
    client.force_login(user)
    page.context.add_cookies([{"name": settings.SESSION_COOKIE_NAME, "url": asgi_server.url,
                               "value": client.cookies[settings.SESSION_COOKIE_NAME].value}])


def open_wall(page, asgi_server, repository):
    page.goto(f"{asgi_server.url}/radiators/{repository.name}/")
    expect(page.locator("#wall")).to_have_attribute("data-renders", re.compile(r"^[1-9]"))
    return page


def store(job, rows):
    """What a job does with its JUnit report (pipeline.services.jobs._store_test_results)."""
    rollups.record_results(job, rows)
    TestResult.objects.bulk_create(TestResult(job=job, **row) for row in rows)


def with_a_busier_history(repository, people):
    """Around the real train: two branches on branch nodes (one red and claimed, one red
    only by a known flaky test) and test results, so every panel has something to show."""
    alice = people[0]
    for name, branch, failing in (("bn-1", "feature/search", "test_query_syntax"),
                                  ("bn-2", "feature/cart", "test_sometimes_slow")):
        node = Node.objects.create(name=name, base_path=f"/tmp/{name}", health="healthy",
                                   transport=Node.Transport.LOCAL, repository=repository)
        NodeLease.objects.create(node=node, repository=repository, branch=branch)
        for status in ("passed", "failed"):
            commit = CommitFactory(repository=repository)
            build = Build.objects.create(repository=repository, commit=commit, sha=commit.sha,
                                         branch=branch, status=status, message=f"unit {status}")
            job = Job.objects.create(build=build, name="unit", status=status, command=["true"],
                                     timeout=60, junit_path="r.xml")
            rows = [{"suite": "unit", "classname": "tests.Cart", "name": test,
                     "outcome": "failed" if status == "failed" and test == failing else "passed",
                     "duration": 0.2 + index, "message": ""}
                    for index, test in enumerate(["test_query_syntax", "test_sometimes_slow",
                                                  "test_checkout_total"])]
            store(job, rows)
    # test_sometimes_slow also passed on the red SHA: a known flaky test.
    cart = Build.objects.filter(branch="feature/cart", status="failed").get()
    retry = Job.objects.create(build=cart, name="unit-retry", status="passed", command=["true"],
                               timeout=60, junit_path="r.xml")
    store(retry, [{"suite": "unit", "classname": "tests.Cart",
                                    "name": "test_sometimes_slow", "outcome": "passed",
                                    "duration": 1.2, "message": ""}])
    Claim.objects.create(repository=repository, branch="feature/search", user=alice,
                         note="fixing the parser")


def test_a_viewer_sees_every_panel_no_controls_and_nothing_scrolls(page, asgi_server, people,
                                                                    waiting_train, tmp_path):
    repository = waiting_train.repository
    with_a_busier_history(repository, people)
    open_wall(page, asgi_server, repository)

    expect(page.locator('[data-role="controls"]')).to_have_count(0)
    expect(page.locator("button")).to_have_count(0)
    strip = page.locator(f'.train[data-train="{waiting_train.pk}"]')
    expect(strip.locator('[data-role="train-status"]')).to_have_text("awaiting approval")
    expect(strip.locator(".stage")).to_have_count(4)
    expect(strip.locator('[data-stage="production"] .badge-word')).to_have_text("APPROVAL")
    expect(strip.locator('[data-author="alice"] .badge-word')).to_have_text("WAITING")
    expect(strip.locator('[data-author="bob"] .author-blocking')).to_contain_text("blocking for")
    expect(strip.locator(".next-tick")).to_contain_text(re.compile("next train in|no schedule"))
    search = page.locator('.tile[data-key="shop:feature/search"]')
    expect(search.locator(".badge-word")).to_have_text("FAILED")
    expect(search.locator('[data-role="claim"]')).to_have_text("alice is on it — fixing the parser")
    expect(page.locator('.tile[data-key="shop:feature/cart"] .badge-word')).to_have_text("FLAKY")
    expect(page.locator('[data-role="greens"]')).to_contain_text("1 branch green")
    expect(page.locator('[data-env="production"]')).to_be_visible()
    expect(page.locator('tr[data-suite="unit"]')).to_be_visible()

    assert page.evaluate("document.documentElement.scrollHeight") <= 1080
    assert page.evaluate("document.documentElement.scrollWidth") <= 1920
    folder = DOCS if os.environ.get("TRAINYARD_SCREENSHOTS") == "1" else tmp_path
    page.screenshot(path=folder / "radiator.png", animations="disabled")


def test_the_command_box_runs_why_and_a_veto_needs_a_reason(page, asgi_server, people,
                                                            waiting_train):
    _, bob, _ = people
    log_in(page, asgi_server, bob)
    open_wall(page, asgi_server, waiting_train.repository)
    assert page.evaluate("document.documentElement.scrollHeight") <= 1080

    page.fill('[data-role="command-form"] input', "!why master")
    page.locator('[data-role="command-form"] button').click()
    expect(page.locator('[data-role="result"]')).to_have_text(
        re.compile(rf"rides train #{waiting_train.pk}, which is waiting for alice, bob"), timeout=LIVE)

    page.locator('[data-action="bad"]').click()
    expect(page.locator('[data-role="dialog"]')).to_be_visible()
    page.locator('[data-role="dialog-confirm"]').click()  # no reason given
    expect(page.locator('[data-role="result"]')).to_have_text(
        "usage: !bad <reason> (a reason is required)")
    expect(page.locator('[data-role="result"]')).to_have_attribute("data-ok", "0")
    waiting_train.refresh_from_db()
    assert waiting_train.status == "awaiting_approval"
    assert not waiting_train.approvals.filter(user=bob).exists()
    expect(page.locator('[data-action="force"]')).to_have_count(0)  # not a release manager


def test_the_authors_approve_from_the_wall_and_the_train_moves(page, asgi_server, people,
                                                               waiting_train):
    alice, bob, _ = people
    # A second screen, nobody signed in (the wall on the office TV), open all along.
    tv = page.context.browser.new_context(viewport={"width": 1920, "height": 1080}).new_page()
    open_wall(tv, asgi_server, waiting_train.repository)
    expect(tv.locator('[data-role="connection"]')).to_have_attribute("data-state", "live",
                                                                     timeout=LIVE)
    tv.evaluate("window.__marker = 1")  # gone if it ever reloads
    for author in (alice, bob):
        page.context.clear_cookies()
        log_in(page, asgi_server, author)
        open_wall(page, asgi_server, waiting_train.repository)
        approve = page.locator('[data-action="good"]')
        expect(approve).to_be_visible()
        approve.click()
        expect(page.locator('[data-role="result"]')).to_contain_text(
            f"{author.username} says good to train #{waiting_train.pk}", timeout=LIVE)
        expect(page.locator(f'[data-author="{author.username}"] .badge-word')).to_have_text("GOOD")
        # The other screen sees the answer over its socket, without a reload.
        expect(tv.locator(f'[data-author="{author.username}"] .badge-word')).to_have_text(
            "GOOD", timeout=LIVE)
    assert tv.evaluate("window.__marker") == 1
    tv.context.close()

    wait_for_train(waiting_train, "deploying_production", "deployed", "failed", timeout=180)
    assert waiting_train.status != "failed", waiting_train.message
    strip = page.locator(f'.train[data-train="{waiting_train.pk}"]')
    expect(strip.locator('[data-role="train-status"]')).to_have_text(
        re.compile("deploying production|deployed"), timeout=LIVE)
    expect(page.locator('[data-action="good"]')).to_be_hidden(timeout=LIVE)
