// Radiator: a wall screen for one repository's recent builds.
//
// The page recovers its state from snapshot.json; the websocket only carries changes.
// Every event is applied in place; an event about a build or job the page does not
// show yet makes it fetch the snapshot and re-render from it. When the socket drops
// it reconnects with backoff and fetches the snapshot again. Nothing is ever sent on
// the socket: it is read-only.
(function () {
  "use strict";

  const root = document.getElementById("radiator");
  if (!root) return;

  const config = root.dataset;
  const LIMIT = parseInt(config.limit, 10) || 12;
  const RANK = { queued: 0, running: 1, passed: 2, failed: 2, error: 2, cancelled: 2 };
  const STATUSES = Object.keys(RANK);
  const ENDED = new Set(["passed", "failed", "error", "cancelled"]);
  const BACKOFF_MIN_MS = 500;
  const BACKOFF_MAX_MS = 15000;
  const STABLE_MS = 5000; // a connection that lasts this long resets the backoff
  const CONNECT_TIMEOUT_MS = 10000; // a handshake that hangs is given up and retried
  const SNAPSHOT_RETRY_MS = 3000;
  const SAFETY_REFRESH_MS = 60000; // re-read the snapshot now and then: a lost event heals

  const list = root.querySelector("[data-role=builds]");
  const empty = root.querySelector("[data-role=empty]");
  const buildTemplate = document.getElementById("rad-build-template");
  const jobTemplate = document.getElementById("rad-job-template");
  const connection = document.querySelector("[data-role=connection]");
  const connectionLabel = document.querySelector("[data-role=connection-label]");
  const clock = document.querySelector("[data-role=clock]");
  const updated = document.querySelector("[data-role=updated]");
  const summary = document.querySelector("[data-role=summary]");

  let skewMs = 0; // the server's clock minus ours
  let lastUpdate = Date.now();
  let socket = null;
  let attempts = 0;
  let retryTimer = null;
  let stableTimer = null;
  let snapshotTimer = null;
  let fetching = false;
  let fetchAgain = false;
  let pending = [];
  let renders = 0;
  let retryAt = 0; // when the next connection attempt is due, while disconnected

  // Small helpers --------------------------------------------------------------------

  const part = (el, name) => el.querySelector(`[data-part="${name}"]`);

  function setText(el, text) {
    const value = text == null ? "" : String(text);
    if (el && el.textContent !== value) el.textContent = value;
  }

  function setSkew(iso) {
    const server = Date.parse(iso);
    if (!Number.isNaN(server)) skewMs = server - Date.now();
  }

  const serverNow = () => Date.now() + skewMs;

  function formatAge(ms) {
    const s = Math.max(0, Math.round(ms / 1000));
    if (s < 10) return "just now";
    if (s < 60) return `${s} s ago`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m} min ago`;
    const h = Math.floor(m / 60);
    if (h < 48) return `${h} h ago`;
    return `${Math.floor(h / 24)} days ago`;
  }

  function formatDuration(ms) {
    const total = Math.max(0, Math.floor(ms / 1000));
    const h = Math.floor(total / 3600);
    const m = Math.floor((total % 3600) / 60);
    const s = String(total % 60).padStart(2, "0");
    return h ? `${h}:${String(m).padStart(2, "0")}:${s}` : `${m}:${s}`;
  }

  // Statuses ---------------------------------------------------------------------------

  function setStatus(el, status, prefix) {
    if (!(status in RANK)) return;
    for (const known of STATUSES) el.classList.toggle(`status-${known}`, known === status);
    el.dataset.status = status;
    setText(part(el, `${prefix}-status`), status);
    const icon = part(el, `${prefix}-icon`);
    if (icon && icon.getAttribute("href") !== `#rad-i-${status}`) {
      icon.setAttribute("href", `#rad-i-${status}`);
    }
  }

  // Statuses only move forward (queued -> running -> ended): an event that arrives
  // late never undoes a newer one.
  function advance(el, status, prefix) {
    if (!(status in RANK)) return false;
    const current = el.dataset.status;
    if (current === status || (current in RANK && RANK[status] < RANK[current])) return false;
    setStatus(el, status, prefix);
    return true;
  }

  // Rendering from the snapshot ----------------------------------------------------------

  function clone(template) {
    return template.content.firstElementChild.cloneNode(true);
  }

  function findBuild(id) {
    return list.querySelector(`:scope > [data-build-id="${Number(id)}"]`);
  }

  function findJob(card, id) {
    return part(card, "jobs").querySelector(`:scope > [data-job-id="${Number(id)}"]`);
  }

  function fillJob(pill, job) {
    pill.dataset.jobId = job.id;
    pill.dataset.jobName = job.name;
    setStatus(pill, job.status, "job");
    setText(part(pill, "job-name"), job.name);
    pill.title = `${job.name}: ${job.status}${job.message ? " · " + job.message : ""}`;
  }

  function fillBuild(card, build) {
    card.dataset.buildId = build.id;
    card.dataset.created = build.created_at || "";
    card.dataset.started = build.started_at || "";
    card.dataset.finished = build.finished_at || "";
    setStatus(card, build.status, "build");
    const branch = part(card, "branch");
    setText(branch, build.branch);
    if (build.url) branch.setAttribute("href", build.url);
    setText(part(card, "number"), `#${build.id}`);
    const sha = part(card, "sha");
    setText(sha, (build.sha || "").slice(0, 7));
    sha.title = build.sha || "";
    setText(part(card, "who"), build.requested_by || "");
    part(card, "age").setAttribute("datetime", build.created_at || "");
    setText(part(card, "message"), build.message);
    reconcile(part(card, "jobs"), build.jobs, (job) => findJob(card, job.id),
      () => clone(jobTemplate), fillJob);
  }

  // Put `items` into `container` in order, reusing the elements already there.
  function reconcile(container, items, find, create, fill) {
    const keep = new Set();
    let previous = null;
    for (const item of items) {
      const el = find(item) || create();
      fill(el, item);
      const wanted = previous ? previous.nextElementSibling : container.firstElementChild;
      if (el !== wanted) container.insertBefore(el, wanted);
      keep.add(el);
      previous = el;
    }
    for (const el of Array.from(container.children)) if (!keep.has(el)) el.remove();
  }

  function render(snapshot) {
    renders += 1;
    setSkew(snapshot.now);
    reconcile(list, snapshot.builds, (build) => findBuild(build.id),
      () => clone(buildTemplate), fillBuild);
    empty.hidden = snapshot.builds.length > 0;
    root.dataset.renders = String(renders); // how many snapshots this page has shown
    tick();
  }

  // Live events ---------------------------------------------------------------------------

  // Apply one event in place. False when the page lacks what it is about.
  function applyEvent(event) {
    if (!event.build_id) return true; // not about a build: nothing here shows it
    const card = findBuild(event.build_id);
    if (!card) return olderThanShown(event.build_id);
    if (event.kind === "build.status" || event.kind === "build.requested") {
      advance(card, event.new, "build");
      if (card.dataset.status === event.new) {
        // The build's own event has the time and the reason (another event's payload
        // may have moved the status already).
        if (event.new === "running" && !card.dataset.started) {
          card.dataset.started = event.created_at || "";
        }
        if (ENDED.has(event.new)) {
          card.dataset.finished = event.created_at || card.dataset.finished;
          setText(part(card, "message"), event.message);
        }
      }
    } else if (event.job_id) {
      // job.status, and whatever else is about a job (job.waiting: for a branch node).
      const pill = findJob(card, event.job_id);
      if (!pill) return false; // a job of a new stage (deploy, smoke): the snapshot has it
      if (event.kind === "job.status") advance(pill, event.new, "job");
      if (event.job) advance(pill, event.job.status, "job");
      const note = event.message ? ` · ${event.message}` : "";
      pill.title = `${pill.dataset.jobName}: ${pill.dataset.status}${note}`;
      // Why a build stands still belongs on its row, readable from across the room.
      const message = part(card, "message");
      if (event.kind === "job.waiting") {
        setText(message, event.message);
        message.dataset.waiting = "1";
      } else if (event.kind === "job.status" && event.new === "running" && message.dataset.waiting) {
        setText(message, "");
        delete message.dataset.waiting;
      }
    }
    // The payload carries the build's status as of publishing: it may be newer.
    if (event.build && advance(card, event.build.status, "build") && ENDED.has(event.build.status)) {
      card.dataset.finished = card.dataset.finished || event.created_at || "";
    }
    return true;
  }

  // A build older than every one on a full page has scrolled off: ignore its events.
  function olderThanShown(buildId) {
    const cards = list.children;
    if (cards.length < LIMIT) return false;
    const oldest = Number(cards[cards.length - 1].dataset.buildId);
    return Number(buildId) < oldest;
  }

  function onEvent(event) {
    if (!event || typeof event !== "object" || event.error) return;
    if (event.repository && event.repository !== config.repository) return;
    markUpdated();
    if (fetching) {
      pending.push(event);
      return;
    }
    if (!applyEvent(event)) refreshSnapshot();
    tick();
  }

  async function refreshSnapshot() {
    if (fetching) {
      fetchAgain = true;
      return;
    }
    fetching = true;
    clearTimeout(snapshotTimer);
    try {
      let rounds = 0;
      do {
        fetchAgain = false;
        rounds += 1;
        const response = await fetch(config.snapshotUrl, {
          cache: "no-store", credentials: "same-origin", headers: { Accept: "application/json" },
        });
        if (!response.ok) throw new Error(`snapshot: HTTP ${response.status}`);
        render(await response.json());
        markUpdated();
        // Events that arrived during the fetch may be newer than the snapshot.
        const queued = pending;
        pending = [];
        for (const event of queued) if (!applyEvent(event)) fetchAgain = true;
      } while (fetchAgain && rounds < 3);
      snapshotTimer = setTimeout(refreshSnapshot, fetchAgain ? SNAPSHOT_RETRY_MS : SAFETY_REFRESH_MS);
    } catch (error) {
      pending = [];
      snapshotTimer = setTimeout(refreshSnapshot, SNAPSHOT_RETRY_MS);
    } finally {
      fetching = false;
    }
  }

  // The socket ------------------------------------------------------------------------------

  function socketUrl() {
    const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
    return `${scheme}//${window.location.host}${config.socketPath}`;
  }

  function setConnection(state, label) {
    connection.dataset.state = state;
    setText(connectionLabel, label || state);
  }

  function connect() {
    clearTimeout(retryTimer);
    retryAt = 0;
    setConnection(attempts ? "reconnecting" : "connecting");
    let ws;
    try {
      ws = new WebSocket(socketUrl());
    } catch (error) {
      scheduleReconnect();
      return;
    }
    socket = ws;
    const handshake = setTimeout(() => ws.close(), CONNECT_TIMEOUT_MS);
    ws.addEventListener("open", () => {
      clearTimeout(handshake);
      if (socket !== ws) return;
      setConnection("live");
      stableTimer = setTimeout(() => { attempts = 0; }, STABLE_MS);
      refreshSnapshot(); // whatever happened while nobody was listening
    });
    ws.addEventListener("message", (message) => {
      if (socket !== ws) return;
      let event;
      try {
        event = JSON.parse(message.data);
      } catch (error) {
        return;
      }
      onEvent(event);
    });
    ws.addEventListener("close", () => {
      clearTimeout(handshake);
      if (socket !== ws) return;
      socket = null;
      clearTimeout(stableTimer);
      scheduleReconnect();
    });
  }

  function scheduleReconnect() {
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** attempts);
    const delay = Math.round(base * (0.75 + Math.random() * 0.5));
    attempts += 1;
    retryAt = Date.now() + delay;
    showRetry();
    retryTimer = setTimeout(connect, delay);
  }

  function showRetry() {
    const seconds = Math.max(1, Math.ceil((retryAt - Date.now()) / 1000));
    setConnection("reconnecting", `reconnecting in ${seconds} s`);
  }

  window.addEventListener("online", () => {
    if (!socket) {
      attempts = 0;
      connect();
    }
  });

  // Clock, ages, durations, summary ------------------------------------------------------------

  function markUpdated() {
    lastUpdate = Date.now();
  }

  function tick() {
    const now = serverNow();
    const local = new Date();
    setText(clock, local.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hour12: false }));
    clock.setAttribute("datetime", local.toISOString());
    setText(updated, formatAge(Date.now() - lastUpdate));
    if (retryAt) showRetry();
    const counts = {};
    for (const card of list.children) {
      const status = card.dataset.status;
      counts[status] = (counts[status] || 0) + 1;
      const created = Date.parse(card.dataset.created);
      if (!Number.isNaN(created)) setText(part(card, "age"), formatAge(now - created));
      const started = Date.parse(card.dataset.started);
      const finished = Date.parse(card.dataset.finished);
      let duration = "";
      if (!Number.isNaN(started)) {
        if (!Number.isNaN(finished)) duration = formatDuration(finished - started);
        else if (status === "running") duration = formatDuration(now - started);
      }
      setText(part(card, "duration"), duration);
    }
    showSummary(counts);
  }

  let summaryKey = null;

  function showSummary(counts) {
    const shown = STATUSES.filter((status) => counts[status]);
    const key = shown.map((status) => `${counts[status]} ${status}`).join(" · ");
    if (key === summaryKey) return;
    summaryKey = key;
    summary.replaceChildren(...shown.flatMap((status, index) => {
      const count = document.createElement("span");
      count.className = `rad-count status-${status}`;
      count.textContent = `${counts[status]} ${status}`;
      return index ? [" · ", count] : [count];
    }));
  }

  setSkew(config.serverNow);
  tick();
  setInterval(tick, 1000);
  connect();
})();
