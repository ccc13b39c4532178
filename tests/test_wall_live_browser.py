"""live.js in headless Chromium against the real server: a build's status changes on
screen without a reload; the page recovers by itself after the server restarts; "stale"
shows when nothing has arrived for long enough (and not while a quiet wall's heartbeats
arrive); a seq gap is re-synced; a new server version reloads the page.

live.js is loaded into a page of the server with no script of its own, under the site's
Content-Security-Policy, and driven by a small harness that keeps the panels it is sent
and shows its status in <body data-live-status>: the wall's own page drives live.js the
same way, through the same contract.
"""

import json
import re

import pytest
from playwright.sync_api import expect

from pipeline.models import Build
from pipeline.statemachine import transition
from tests.conftest import ThreadedUvicorn
from tests.csp import csp_violations, watch_csp
from tests.factories import BuildFactory, CommitFactory, RepositoryFactory
from tests.helpers import free_port, off_main_thread, port_closed, wait_until

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

SECONDS = 1000

HARNESS = """() => {
window.__live = { statuses: [], snapshots: 0, changes: 0, panels: {}, seq: null };
TrainyardLive.connect({
  onSnapshot(panels, meta) {
    __live.panels = Object.assign({}, panels);
    __live.snapshots += 1;
    __live.seq = meta.seq;
    document.getElementById("panels").textContent = JSON.stringify(__live.panels);
  },
  onPanels(changed, meta) {
    Object.assign(__live.panels, changed);
    __live.changes += 1;
    __live.seq = meta.seq;
    document.getElementById("panels").textContent = JSON.stringify(__live.panels);
  },
  onStatus(state) {
    __live.statuses.push(state);
    document.body.dataset.liveStatus = state;
  },
});
}"""

# The statuses the page's panels show for a branch (in whichever panel and shape).
STATUSES = """(branch) => {
  const found = new Set();
  const walk = (v) => {
    if (Array.isArray(v)) v.forEach(walk);
    else if (v && typeof v === "object") {
      if (v.branch === branch && "status" in v) found.add(v.status);
      Object.values(v).forEach(walk);
    }
  };
  walk(window.__live.panels);
  return [...found].sort();
}"""


@pytest.fixture(autouse=True)
def _no_csp_violations(page):
    seen = watch_csp(page)
    yield
    assert csp_violations(page, seen) == []


@pytest.fixture(autouse=True)
def _quick_heartbeat(settings):
    settings.TRAINYARD = {**settings.TRAINYARD, "WALL_HEARTBEAT_SECONDS": 0.5}


@pytest.fixture
def demo(db):
    return RepositoryFactory(name="demo")


@pytest.fixture
def server():
    """Trainyard's ASGI app on a port of this test's own, to stop and start again."""
    port = free_port()
    running = ThreadedUvicorn("pipeline.asgi:application", port).__enter__()
    holder = {"server": running, "port": port}
    yield holder
    if holder["server"] is not None:
        holder["server"].__exit__(None, None, None)


def stop(holder):
    holder["server"].__exit__(None, None, None)
    holder["server"] = None
    wait_until(lambda: port_closed(holder["port"]), timeout=20, message="the server to stop")


def start(holder):
    holder["server"] = ThreadedUvicorn("pipeline.asgi:application", holder["port"]).__enter__()


def open_live_page(page, base_url, socket_path, stale_ms=30000):
    """Load live.js into a real page of the server (its home page, which has no script of
    its own): the document comes from the server, under its CSP, like the wall's page.
    The harness is handed in through DevTools (Playwright's evaluate), not inline."""
    page.goto(f"{base_url}/")
    page.evaluate("""([socket, staleMs]) => new Promise((resolve, reject) => {
        Object.assign(document.body.dataset, {socketUrl: socket, liveStaleAfterMs: staleMs,
                                              liveBackoffMaxMs: "1000"});
        document.body.append(Object.assign(document.createElement("pre"), {id: "panels"}));
        const script = Object.assign(document.createElement("script"),
                                     {src: "/static/radiators/live.js"});
        script.addEventListener("load", resolve);
        script.addEventListener("error", reject);
        document.head.append(script);
    })""", [socket_path, str(stale_ms)])
    page.evaluate(HARNESS)
    expect(page.locator("body")).to_have_attribute("data-live-status", "live",
                                                   timeout=10 * SECONDS)
    page.evaluate("window.__marker = 1")  # gone if the page ever reloads
    return page


def shows(page, branch, *statuses, timeout=10 * SECONDS):
    page.wait_for_function(f"(want) => JSON.stringify(({STATUSES})(want[0])) === want[1]",
                           arg=[branch, json.dumps(sorted(statuses), separators=(",", ":"))],
                           timeout=timeout)


def not_reloaded(page):
    return page.evaluate("window.__marker") == 1


def set_status(build, status):
    assert off_main_thread(lambda: transition(Build.objects.get(pk=build.pk), status))


def url(holder):
    return f"http://127.0.0.1:{holder['port']}"


# ------------------------------------------------------------------------------------------

def test_a_builds_status_changes_on_screen_without_a_reload(page, server, demo):
    sent = []
    page.on("websocket", lambda ws: ws.on("framesent", lambda payload: sent.append(payload)))
    build = BuildFactory(commit=CommitFactory(repository=demo), branch="feature/live")
    open_live_page(page, url(server), "/ws/radiators/demo/")
    shows(page, "feature/live", "queued")

    set_status(build, Build.Status.RUNNING)
    shows(page, "feature/live", "running")
    set_status(build, Build.Status.PASSED)
    shows(page, "feature/live", "passed")

    assert not_reloaded(page)
    assert page.evaluate("window.__live.snapshots") == 1
    assert sent == [], "nothing is ever sent on the socket without a gap"


def test_the_page_recovers_by_itself_after_the_server_restarts(page, server, demo):
    build = BuildFactory(commit=CommitFactory(repository=demo), branch="feature/restart")
    open_live_page(page, url(server), "/ws/radiators/demo/")
    shows(page, "feature/restart", "queued")
    body = page.locator("body")

    stop(server)
    expect(body).to_have_attribute("data-live-status", "reconnecting")
    set_status(build, Build.Status.RUNNING)  # while the server is away: nobody tells the page
    shows(page, "feature/restart", "queued")

    start(server)
    expect(body).to_have_attribute("data-live-status", "live", timeout=20 * SECONDS)
    shows(page, "feature/restart", "running")  # from the snapshot sent on reconnecting
    assert not_reloaded(page)
    assert page.evaluate("window.__live.snapshots") == 2


def test_a_quiet_wall_stays_live_and_turns_stale_once_the_server_is_gone(page, server, demo):
    open_live_page(page, url(server), "/ws/radiators/demo/", stale_ms=1500)
    # Heartbeats every 0.5 s: wait until more than the stale delay has passed on screen.
    first = page.evaluate("window.__live.seq")
    page.wait_for_function("(seq) => window.__live.seq >= seq", arg=first + 5,
                           timeout=10 * SECONDS)
    assert "stale" not in page.evaluate("window.__live.statuses")

    stop(server)
    expect(page.locator("body")).to_have_attribute("data-live-status", "stale",
                                                   timeout=10 * SECONDS)
    assert not_reloaded(page)


def test_a_gap_in_the_sequence_is_resynced(page, server, demo):
    build = BuildFactory(commit=CommitFactory(repository=demo), branch="feature/gap")
    dropped, from_page = [], []

    def route(ws):
        upstream = ws.connect_to_server()

        def from_client(message):
            from_page.append(message)
            upstream.send(message)

        ws.on_message(from_client)

        def from_server(message):
            data = json.loads(message)
            if data["type"] == "panels" and data["panels"] and not dropped:
                dropped.append(data)  # lost on the way: the next message shows a gap
                return
            ws.send(message)

        upstream.on_message(from_server)

    page.route_web_socket(re.compile(r"/ws/radiators/"), route)
    open_live_page(page, url(server), "/ws/radiators/demo/")

    set_status(build, Build.Status.RUNNING)  # this change's message is the one dropped
    shows(page, "feature/gap", "running")  # from the snapshot the resync brought
    assert len(dropped) == 1
    assert [json.loads(m) for m in from_page] == [{"type": "resync"}]
    assert page.evaluate("window.__live.snapshots") == 2
    assert not_reloaded(page)


def test_a_new_server_version_reloads_the_page(page, server, demo, settings):
    open_live_page(page, url(server), "/ws/radiators/demo/")
    with page.expect_event("load", timeout=10 * SECONDS):  # the reload, by live.js itself
        settings.TRAINYARD_VERSION = "next-release"
    assert page.evaluate("window.__marker") is None  # a new document
    assert page.url == f"{url(server)}/"
