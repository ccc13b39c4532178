"""The radiator in headless Chromium: builds and jobs change on screen as they run,
over the websocket, without a reload; after a dropped socket the page catches up from
the snapshot. Also writes the screenshots in docs/screenshots/ when
TRAINYARD_SCREENSHOTS=1 (elsewhere they go to a temp folder, so runs leave no changes).
"""

import hashlib
import json
import os
import re
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from pipeline.models import Build, Job, LogChunk, PullRequest, TestResult
from pipeline.services.builds import request_build
from tests.csp import csp_violations, watch_csp
from tests.factories import BuildFactory, CommitFactory, JobFactory, RepositoryFactory, UserFactory
from tests.helpers import Gate, off_main_thread, wait_until

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


def ask_for(repository, branch, user=None):
    build, created = off_main_thread(request_build, repository, branch, user=user, via="test")
    assert created
    return build


def build_card(page, build):
    return page.locator(f'.rad-build[data-build-id="{build.pk}"]')


def expect_build(page, build, status, jobs=None, timeout=LIVE):
    card = build_card(page, build)
    expect(card.locator('[data-part="build-status"]')).to_have_text(status, timeout=timeout)
    expect(card).to_have_class(re.compile(rf"\bstatus-{status}\b"), timeout=timeout)
    for name, job_status in (jobs or {}).items():
        pill = card.locator(f'.rad-job[data-job-name="{name}"]')
        expect(pill.locator('[data-part="job-status"]')).to_have_text(job_status, timeout=timeout)
        expect(pill).to_have_class(re.compile(rf"\bstatus-{job_status}\b"))
    if jobs is not None:
        expect(card.locator(".rad-job")).to_have_count(len(jobs))
    return card


def open_radiator(page, asgi_server, name):
    sent = []
    page.on("websocket", lambda ws: ws.on("framesent", lambda payload: sent.append(payload)))
    page.sent_frames = sent
    page.goto(f"{asgi_server.url}/radiators/{name}/")
    expect(page.locator('[data-role="connection"]')).to_have_attribute("data-state", "live",
                                                                       timeout=10 * SECONDS)
    # Connected, and the snapshot read on connecting is on screen.
    expect(page.locator("#radiator")).to_have_attribute("data-renders", re.compile(r"^[1-9]"))
    page.evaluate("window.__marker = 1")  # gone if the page ever reloads
    return page


def assert_not_reloaded(page):
    assert page.evaluate("window.__marker") == 1
    assert page.sent_frames == [], "the radiator wrote to its read-only socket"


@pytest.fixture
def radiator(page, asgi_server, repository):
    return open_radiator(page, asgi_server, repository.name)


# Live updates -------------------------------------------------------------------------

def test_it_shows_a_new_build_and_each_job_passing_without_a_reload(radiator, worker, repository,
                                                                     developer):
    page = radiator
    expect(page.locator(".rad-build")).to_have_count(0)
    expect(page.locator('[data-role="empty"]')).to_be_visible()

    build = ask_for(repository, "master", developer)

    card = expect_build(page, build, "passed", {"lint": "passed", "unit": "passed"})
    expect(card.locator('[data-part="branch"]')).to_have_text("master")
    expect(card.locator('[data-part="sha"]')).to_have_text(build.sha[:7])
    expect(card.locator('[data-part="who"]')).to_have_text("dev")
    expect(card.locator('[data-part="duration"]')).to_have_text(re.compile(r"^\d+:\d\d$"))
    expect(page.locator('[data-role="empty"]')).to_be_hidden()
    expect(page.locator('[data-role="summary"]')).to_have_text("1 passed")
    assert_not_reloaded(page)


def test_it_follows_a_job_from_running_to_passed(radiator, worker, repository, git_repo):
    page = radiator
    gate = Gate()
    git_repo.commit({"wait.py": gate.script(),
                     "trainyard.yml": "checks:\n  lint: python3 -c pass\n  slow: python3 wait.py\n"},
                    branch="feature/slow")

    build = ask_for(repository, "feature/slow")

    card = expect_build(page, build, "running", {"lint": "passed", "slow": "running"})
    expect(card.locator('.rad-job.status-running .rad-icon')).to_have_css(
        "animation-name", "rad-spin")
    gate.open()
    expect_build(page, build, "passed", {"lint": "passed", "slow": "passed"})
    assert_not_reloaded(page)


def test_it_turns_a_failing_build_red(radiator, worker, repository, git_repo):
    page = radiator
    git_repo.commit({"trainyard.yml": "checks:\n  ok: python3 -c pass\n"
                     "  bad: python3 -c \"import sys; sys.exit(3)\"\n"}, branch="feature/bad")

    build = ask_for(repository, "feature/bad")

    card = expect_build(page, build, "failed", {"ok": "passed", "bad": "failed"})
    expect(card.locator(".rad-state")).to_have_css("background-color", "rgb(220, 38, 38)")
    expect(card.locator('.rad-job[data-job-name="bad"]')).to_have_css(
        "background-color", "rgb(220, 38, 38)")
    expect(card.locator('[data-part="message"]')).to_have_text("bad failed")
    expect(card.locator('[data-part="message"]')).to_be_visible()
    assert_not_reloaded(page)


def test_it_reconnects_and_catches_up_from_the_snapshot(page, asgi_server, repository, worker,
                                                        developer):
    """A build that starts and ends while the socket is down shows up after the reconnect."""
    sockets = {"allowed": True, "open": []}

    def route(ws):
        if not sockets["allowed"]:
            ws.close(code=1011, reason="server away")  # refused before it ever opens
            return
        ws.connect_to_server()
        sockets["open"].append(ws)

    page.route_web_socket(re.compile(r"/ws/radiators/"), route)
    open_radiator(page, asgi_server, repository.name)
    connection = page.locator('[data-role="connection"]')

    sockets["allowed"] = False
    sockets["open"][-1].close(code=1012, reason="server restart")
    expect(connection).to_have_attribute("data-state", "reconnecting")
    expect(connection).to_contain_text(re.compile(r"reconnecting in \d+ s"))

    build = ask_for(repository, "master", developer)

    def ended():
        build.refresh_from_db()
        return build.status in Build.ENDED

    wait_until(ended, timeout=60, message="the build to end while the radiator is away")
    expect(build_card(page, build)).to_have_count(0)  # nobody told the page yet

    sockets["allowed"] = True
    expect(connection).to_have_attribute("data-state", "live", timeout=LIVE)
    expect_build(page, build, "passed", {"lint": "passed", "unit": "passed"})
    assert len(sockets["open"]) == 2
    assert_not_reloaded(page)


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


def test_it_fits_a_wall_screen(page, asgi_server, tmp_path):
    demo = RepositoryFactory(name="demo", clone_url="/srv/git/demo.git")
    builds = make_history(demo)

    open_radiator(page, asgi_server, "demo")

    cards = page.locator(".rad-build")
    expect(cards).to_have_count(len(builds))
    expect(cards.first.locator('[data-part="duration"]')).to_have_text("")  # queued: none yet
    expect(cards.nth(1).locator('[data-part="age"]')).to_have_text("2 min ago")
    # hotfix/session-expiry ran for 140 s
    expect(cards.nth(3).locator('[data-part="duration"]')).to_have_text("2:20")
    expect(page.locator('[data-role="summary"]')).to_have_text(
        "1 queued · 2 running · 5 passed · 2 failed · 1 error · 1 cancelled")
    page.screenshot(path=screenshot_path(tmp_path, "radiator.png"), animations="disabled")
    size = page.viewport_size
    assert size == {"width": 1920, "height": 1080}
    layout = page.evaluate("""() => ({
        width: document.documentElement.scrollWidth,
        bottom: document.querySelector('.rad-build:last-child').getBoundingClientRect().bottom,
        branchPx: parseFloat(getComputedStyle(document.querySelector('.rad-branch')).fontSize),
        statusPx: parseFloat(getComputedStyle(document.querySelector('.rad-state')).fontSize),
    })""")
    assert layout["width"] <= size["width"], "nothing may stick out sideways"
    assert layout["bottom"] <= size["height"], "all recent builds fit on one 1080p screen"
    assert layout["branchPx"] >= 32 and layout["statusPx"] >= 26, layout  # readable at 5 m
    assert_not_reloaded(page)


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


# The page's own logic, against a socket the test plays ------------------------------------

SIGNATURE = """() => [...document.querySelectorAll('.rad-build')].map((card) => ({
    classes: [...card.classList].sort(),
    data: [card.dataset.buildId, card.dataset.status,
           ...['created', 'started', 'finished'].map((k) => Date.parse(card.dataset[k]) || null)],
    parts: ['build-status', 'branch', 'number', 'sha', 'who', 'message'].map(
        (name) => card.querySelector(`[data-part="${name}"]`).textContent.trim()),
    link: card.querySelector('[data-part="branch"]').getAttribute('href'),
    icon: card.querySelector('[data-part="build-icon"]').getAttribute('href'),
    jobs: [...card.querySelectorAll('.rad-job')].map((job) => [
        [...job.classList].sort(), job.dataset.jobId, job.dataset.jobName, job.dataset.status,
        job.title, job.querySelector('[data-part="job-status"]').textContent.trim(),
        job.querySelector('[data-part="job-icon"]').getAttribute('href')]),
}))"""


def played_socket(page):
    """Stand in for the server's socket: the test sends the events."""
    sockets = []
    page.route_web_socket(re.compile(r"/ws/radiators/"), lambda ws: sockets.append(ws))
    return sockets


def snapshot_requests(page):
    requests = []
    page.on("request", lambda r: requests.append(r.url) if "snapshot.json" in r.url else None)
    return requests


def event(kind, build, new, job=None, build_status=None, message=""):
    payload = {"id": 1, "kind": kind, "new": new, "old": "", "message": message,
               "created_at": timezone.now().isoformat(), "repository": "demo",
               "build_id": build.pk, "job_id": job.pk if job else None, "data": {},
               "build": {"id": build.pk, "status": build_status or build.status,
                         "branch": build.branch, "sha": build.sha}}
    if job:
        payload["job"] = {"id": job.pk, "name": job.name, "status": new}
    return json.dumps(payload)


def test_it_renders_from_the_snapshot_what_the_server_renders(browser, page, asgi_server):
    demo = RepositoryFactory(name="demo")
    make_history(demo)
    static = browser.new_context(java_script_enabled=False)
    try:
        server_side = static.new_page()
        server_side.goto(f"{asgi_server.url}/radiators/demo/")
        expected = server_side.evaluate(SIGNATURE)
    finally:
        static.close()
    assert len(expected) == len(HISTORY)

    sockets = played_socket(page)
    open_radiator(page, asgi_server, "demo")
    board = page.locator("#radiator")
    expect(board).to_have_attribute("data-renders", "1")  # the snapshot read on connecting
    page.evaluate("document.querySelector('[data-role=builds]').replaceChildren()")
    expect(page.locator(".rad-build")).to_have_count(0)
    newest = Build.objects.filter(repository=demo).first()
    sockets[0].send(event("build.status", newest, newest.status))  # unknown here: re-render

    expect(board).to_have_attribute("data-renders", "2")
    expect(page.locator(".rad-build")).to_have_count(len(HISTORY))
    assert page.evaluate(SIGNATURE) == expected
    assert_not_reloaded(page)


def test_it_applies_events_in_place_and_never_goes_back(page, asgi_server):
    demo = RepositoryFactory(name="demo")
    make_history(demo)
    running = Build.objects.get(repository=demo, branch="fix/flaky-login-test")
    smoke, lint = running.jobs.get(name="smoke"), running.jobs.get(name="lint")
    oldest = Build.objects.filter(repository=demo).last()
    older = BuildFactory(commit=CommitFactory(repository=demo), status="running")
    Build.objects.filter(pk=older.pk).update(id=oldest.pk - 1)  # scrolled off the page
    older.pk = oldest.pk - 1
    sockets = played_socket(page)
    fetched = snapshot_requests(page)
    open_radiator(page, asgi_server, "demo")
    expect(page.locator(".rad-build")).to_have_count(len(HISTORY))
    card = build_card(page, running)
    expect(page.locator("#radiator")).to_have_attribute("data-renders", "1")
    socket = sockets[0]

    socket.send(event("job.status", running, "running", job=smoke))
    expect_build(page, running, "running", {"lint": "passed", "unit": "running",
                                            "integration": "running", "smoke": "running"})
    socket.send(event("job.status", running, "running", job=lint))  # late: lint had passed
    unit = running.jobs.get(name="unit")
    # Published after the build had failed too: the payload's build status moves the row.
    socket.send(event("job.status", running, "failed", job=unit, build_status="failed"))
    socket.send(event("build.status", running, "failed", message="unit failed"))
    socket.send(event("build.status", running, "running"))  # late again
    socket.send(event("job.status", older, "passed", job=None))  # not shown, and older
    other = Build.objects.get(repository=demo, branch="feature/api-rate-limits")
    socket.send(event("job.status", other, "passed", job=other.jobs.get(name="integration")))
    # Events are handled in order: once the last one shows, the others have been handled.
    expect_build(page, other, "running", {"lint": "passed", "unit": "passed",
                                          "integration": "passed"})
    expect_build(page, running, "failed", {"lint": "passed", "unit": "failed",
                                           "integration": "running", "smoke": "running"},
                 timeout=1000)
    expect(card.locator('[data-part="message"]')).to_have_text("unit failed")
    expect(card.locator('[data-part="build-icon"]')).to_have_attribute("href", "#rad-i-failed")
    expect(page.locator('[data-role="summary"]')).to_contain_text("1 running")
    assert fetched == [f"{asgi_server.url}/radiators/demo/snapshot.json"], (
        "events about builds on the page (or too old for it) need no snapshot")
    expect(page.locator("#radiator")).to_have_attribute("data-renders", "1")
    assert_not_reloaded(page)
