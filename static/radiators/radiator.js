// The wall: draws every panel from the wall's snapshot (radiators/snapshot.py) and
// keeps it current. With live.js (window.TrainyardLive) the socket sends the whole
// snapshot on connect and then only the panels that changed; without it (or without
// websockets) the page reads snapshot.json every 5 s. Panels are replaced whole.
//
// Signed-in users (never kiosk screens) also get the controls: Approve / Veto for the
// train's authors, Force / Rollback for release managers (behind a <dialog>), "Build
// branch", a chat-ops command box and Claim buttons. Every control is a CSRF-protected
// POST; the server runs it through pipeline.chatops and checks permissions there.
(function () {
  "use strict";

  const body = document.body;
  const wall = document.getElementById("wall");
  if (!wall) return;

  const POLL_MS = 5000;
  const STALE_MS = 30000;
  const RED = new Set(["failed", "error"]);
  const ANSWERABLE = new Set(["scheduled", "deploying_lower", "testing", "awaiting_approval"]);
  const WORDS = {
    failed: "FAILED", error: "ERROR", flaky: "FLAKY", no_results: "NO RESULTS", passed: "PASSED",
    running: "RUNNING", queued: "QUEUED", cancelled: "CANCELLED", pending: "PENDING",
    waiting: "WAITING", approval: "APPROVAL", deploying: "DEPLOYING", testing: "TESTING",
    deployed: "DEPLOYED",
  };

  const panels = {};
  let skewMs = 0;
  let lastData = Date.now();
  let renders = 0;
  let previousStates = null; // tile key -> state, for the sound on a change of state
  let currentTrain = null; // the train the controls act on (per-repository wall)

  // Small helpers ----------------------------------------------------------------------------

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value == null || value === false) continue;
      if (name === "class") el.className = value;
      else if (name === "text") el.textContent = value;
      else if (name.startsWith("data-")) el.setAttribute(name, value === true ? "" : value);
      else el.setAttribute(name, value === true ? "" : value);
    }
    for (const child of children.flat()) {
      if (child == null || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  function icon(name, cls) {
    const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.setAttribute("class", cls || "icon");
    svg.setAttribute("aria-hidden", "true");
    const use = document.createElementNS("http://www.w3.org/2000/svg", "use");
    use.setAttribute("href", `#i-${name}`);
    svg.append(use);
    return svg;
  }

  function badge(state, label) {
    return h("span", { class: `badge st-${state}`, "data-state": state },
      icon(RED.has(state) ? state : (WORDS[state] ? state : "pending")),
      h("span", { class: "badge-word", text: label || WORDS[state] || state.toUpperCase() }));
  }

  const serverNow = () => Date.now() + skewMs;

  function since(iso, cls) {
    return h("time", { class: cls || "age", "data-since": iso || "", datetime: iso || "" });
  }

  function until(iso, cls) {
    return h("time", { class: cls || "countdown", "data-until": iso || "", datetime: iso || "" });
  }

  function formatSpan(ms) {
    const s = Math.max(0, Math.round(ms / 1000));
    if (s < 60) return `${s} s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m} min`;
    const hours = Math.floor(m / 60);
    if (hours < 48) return `${hours} h ${m % 60 ? `${m % 60} min` : ""}`.trim();
    return `${Math.floor(hours / 24)} days`;
  }

  function formatClock(ms) {
    const s = Math.max(0, Math.round(ms / 1000));
    const m = Math.floor(s / 60);
    const hours = Math.floor(m / 60);
    const pad = (n) => String(n).padStart(2, "0");
    return hours ? `${hours}:${pad(m % 60)}:${pad(s % 60)}` : `${m}:${pad(s % 60)}`;
  }

  const seconds = (n) => (n == null ? "–" : formatSpan(n * 1000));
  const percent = (n) => (n == null ? "no results" : `${n.toFixed(n >= 99.95 || n < 10 ? 0 : 1)}%`);

  function tick() {
    const now = serverNow();
    for (const el of document.querySelectorAll("[data-since]")) {
      const at = Date.parse(el.dataset.since);
      const text = Number.isNaN(at) ? "" : formatSpan(now - at);
      if (el.textContent !== text) el.textContent = text;
    }
    for (const el of document.querySelectorAll("[data-until]")) {
      const at = Date.parse(el.dataset.until);
      const text = Number.isNaN(at) ? "" : formatClock(at - now);
      if (el.textContent !== text) el.textContent = text;
    }
    const clock = document.querySelector("[data-role=clock]");
    if (clock) {
      clock.textContent = new Date().toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hour12: false });
    }
    if (!window.TrainyardLive && Date.now() - lastData > STALE_MS) setStatus("stale");
  }

  function setStatus(state) {
    const connection = document.querySelector("[data-role=connection]");
    const label = document.querySelector("[data-role=connection-label]");
    if (!connection) return;
    connection.dataset.state = state;
    label.textContent = state;
  }

  // Panels -----------------------------------------------------------------------------------

  function tileView(tile) {
    const repoLabel = body.dataset.repository ? "" : `${tile.repository} · `;
    const facts = [];
    if (RED.has(tile.state) || tile.state === "flaky") {
      facts.push(h("span", { class: "fact" }, "red for ", since(tile.broken_since), " · ",
        h("strong", { text: `${tile.broken_runs} run${tile.broken_runs === 1 ? "" : "s"}` })));
    } else if (tile.at) {
      facts.push(h("span", { class: "fact" }, since(tile.at), " ago"));
    }
    if (tile.node) {
      facts.push(h("span", { class: `fact node-health health-${tile.node.health}` },
        `${tile.node.name} · ${tile.node.health}`));
    }
    const el = h("article", { class: `tile st-${tile.state}`, "data-key": tile.key, "data-state": tile.state },
      h("div", { class: "tile-head" }, badge(tile.state),
        h("code", { class: "sha", text: tile.sha ? tile.sha.slice(0, 7) : "" })),
      h("h3", { class: "tile-branch", text: repoLabel + tile.branch, title: repoLabel + tile.branch }),
      h("p", { class: "tile-facts" }, facts));
    if (tile.state === "flaky" && tile.flaky_tests.length) {
      el.append(h("p", { class: "tile-note", text: `known flaky: ${tile.flaky_tests.join(", ")}` }));
    } else if (tile.message) {
      el.append(h("p", { class: "tile-note", text: tile.message }));
    }
    if (tile.running) {
      // Sick building: the red result stays; the new run is shown beside it.
      el.append(h("p", { class: "tile-running", "data-role": "running" }, icon("running", "icon spin"),
        `building ${tile.running.sha.slice(0, 7)} · `, since(tile.running.started_at)));
    }
    if (tile.claim) {
      el.append(h("p", { class: "tile-claim", "data-role": "claim" },
        h("strong", { text: `${tile.claim.by} is on it` }), tile.claim.note ? ` — ${tile.claim.note}` : ""));
    }
    if (body.dataset.signedIn && (RED.has(tile.state) || tile.state === "flaky")) {
      const mine = tile.claim && tile.claim.by === controlsUser();
      el.append(h("button", {
        type: "button", class: "ctl ctl-claim", "data-claim": tile.branch, "data-repository": tile.repository,
        "data-release": mine ? "1" : null, text: mine ? "Unclaim" : "Claim",
      }));
    }
    return el;
  }

  function renderBranches(data) {
    const list = h("div", { class: "tiles" });
    for (const tile of data.tiles) list.append(tileView(tile));
    if (data.more) list.append(h("article", { class: "tile tile-more", "data-role": "more", text: `+${data.more} more` }));
    if (data.greens.count) {
      const names = data.greens.names.map((name) => (body.dataset.repository ? name.split(":").slice(1).join(":") : name));
      const extra = data.greens.count - names.length;
      list.append(h("article", { class: "tile tile-greens st-passed", "data-role": "greens" },
        h("div", { class: "tile-head" }, badge("passed", data.state === "all_green" ? "ALL GREEN" : "PASSED")),
        h("h3", { class: "tile-branch", text: `${data.greens.count} branch${data.greens.count === 1 ? "" : "es"} green` }),
        h("p", { class: "tile-facts", text: names.join(" · ") + (extra > 0 ? ` · +${extra}` : "") }),
        data.greens.building ? h("p", { class: "tile-running" }, icon("running", "icon spin"), `${data.greens.building} building`) : null));
    }
    if (!data.tiles.length && !data.greens.count) {
      list.append(h("article", { class: "tile st-no_results", "data-role": "empty" },
        h("div", { class: "tile-head" }, badge("no_results"), h("h3", { class: "tile-branch", text: "nothing built yet" }))));
    }
    return [h("h2", { class: "panel-title", text: "Branches" }), list];
  }

  function stageView(stage) {
    const timing = stage.seconds == null ? "" :
      `${seconds(stage.seconds)}${stage.usual_seconds != null ? ` / usual ${seconds(stage.usual_seconds)}` : ""}`;
    return h("li", { class: `stage st-${stage.status}${stage.slow ? " slow" : ""}`, "data-stage": stage.name, "data-state": stage.status },
      h("span", { class: "stage-name", text: stage.name }),
      badge(stage.status),
      h("code", { class: "sha", text: stage.sha ? stage.sha.slice(0, 7) : "—" }),
      h("span", { class: "stage-acceptance", text: stage.acceptance ? `acceptance ${stage.acceptance}` : "" }),
      h("span", { class: "stage-time", text: timing }));
  }

  function authorView(author) {
    const state = author.answer === "good" ? "passed" : author.answer === "bad" ? "failed" : "waiting";
    const word = author.answer === "good" ? "GOOD" : author.answer === "bad" ? "BAD" : "WAITING";
    return h("li", { class: `author st-${state}`, "data-author": author.username, "data-answer": author.answer || "" },
      badge(state, word), h("span", { class: "author-name", text: author.username }),
      author.blocking_since ? h("span", { class: "author-blocking" }, "blocking for ", since(author.blocking_since)) : null);
  }

  function trainItemView(item) {
    const train = item.train;
    const tick = item.next_tick && item.next_tick.at
      ? h("p", { class: "next-tick" }, "next train in ", until(item.next_tick.at, "countdown"))
      : h("p", { class: "next-tick", text: item.next_tick ? "schedule off" : "no schedule yet" });
    if (!train) {
      return h("div", { class: "train" }, h("p", { class: "train-line", text: `${item.repository}: no train yet` }), tick);
    }
    const title = h("p", { class: "train-line" },
      h("a", { href: train.url, text: `${body.dataset.repository ? "" : `${item.repository} `}train #${train.id}` }),
      " ", h("code", { class: "sha", text: train.head_sha.slice(0, 7) }), " ",
      h("span", { class: `train-status st-${train.status}`, "data-role": "train-status", text: train.status_label }),
      train.eta ? h("span", { class: "train-eta" }, " · ETA ", until(train.eta, "countdown")) : null);
    return h("div", { class: "train", "data-train": train.id },
      title,
      h("ol", { class: "strip" }, train.stages.map(stageView)),
      train.message ? h("p", { class: "train-message", text: train.message }) : null,
      train.authors.length ? h("ul", { class: "authors" }, train.authors.map(authorView)) : null,
      tick);
  }

  function renderTrain(data) {
    currentTrain = body.dataset.repository && data.items.length ? data.items[0].train : null;
    updateTrainControls();
    return [h("h2", { class: "panel-title", text: "Deploy train" }), data.items.map(trainItemView)];
  }

  function renderBuilds(data) {
    const running = data.running.map((b) => h("li", { class: "build st-running", "data-build-id": b.id },
      badge(b.status),
      h("a", { class: "build-branch", href: b.url, text: body.dataset.repository ? b.branch : `${b.repository} · ${b.branch}` }),
      h("code", { class: "sha", text: b.sha.slice(0, 7) }),
      h("span", { class: "progress", text: `${b.done}/${b.jobs.length} jobs` }),
      h("span", { class: "jobs" }, b.jobs.map((j) => h("span", { class: `job st-${j.status}`, title: `${j.name}: ${j.status}` },
        icon(j.status), h("span", { text: j.name })))),
      since(b.started_at || b.created_at)));
    const finished = data.finished.map((b) => h("li", { class: `build st-${b.status}`, "data-build-id": b.id },
      badge(b.status),
      h("a", { class: "build-branch", href: b.url, text: body.dataset.repository ? b.branch : `${b.repository} · ${b.branch}` }),
      h("code", { class: "sha", text: b.sha.slice(0, 7) }),
      h("span", { class: "build-note", text: b.message || "" }),
      h("span", { class: "age-wrap" }, since(b.finished_at || b.created_at), " ago")));
    return [h("h2", { class: "panel-title", text: "Builds" }),
      h("ul", { class: "builds" }, running.length ? running : h("li", { class: "quiet", text: "nothing building" })),
      h("ul", { class: "builds builds-finished" }, finished)];
  }

  function renderEnvironments(data) {
    return [h("h2", { class: "panel-title", text: "Environments" }),
      data.environments.length ? h("ul", { class: "envs" }, data.environments.map((env) => h("li", { class: "env", "data-env": env.name },
        h("span", { class: "env-name", text: env.name }),
        h("code", { class: "sha", text: env.sha ? env.sha.slice(0, 7) : "—" }),
        env.mixed ? h("span", { class: "env-mixed", text: "MIXED" }) : null,
        h("span", { class: "env-nodes", text: `${env.healthy}/${env.nodes} healthy` }))))
        : h("p", { class: "quiet", text: "no environment nodes" })];
  }

  function renderTests(data) {
    const title = h("h2", { class: "panel-title", text: "Test health" });
    if (data.state === "no_results") return [title, h("p", { class: "quiet st-no_results" }, badge("no_results"), " no test results in 7 days")];
    const rate = (value) => h("span", { class: `rate ${value == null ? "st-no_results" : value >= 99 ? "st-passed" : value >= 90 ? "st-flaky" : "st-failed"}`, text: percent(value) });
    return [title,
      h("table", { class: "suites" },
        h("thead", {}, h("tr", {}, h("th", { text: "suite" }), h("th", { text: "24 h" }), h("th", { text: "7 days" }))),
        h("tbody", {}, data.suites.map((s) => h("tr", { "data-suite": s.suite }, h("td", { text: s.suite }), h("td", {}, rate(s.rate_24h)), h("td", {}, rate(s.rate_7d)))))),
      data.more_suites ? h("p", { class: "quiet", text: `+${data.more_suites} more suites` }) : null,
      h("div", { class: "test-lists" },
        h("div", {}, h("h3", { text: "Flaky" }), data.flaky.length
          ? h("ol", { class: "flaky" }, data.flaky.map((t) => h("li", { "data-test": t.name }, h("span", { class: "test-name", text: t.name }), h("span", { class: "test-num", text: `${t.flips} flips` }))))
          : h("p", { class: "quiet", text: "none" })),
        h("div", {}, h("h3", { text: "Slowest" }), h("ol", { class: "slowest" }, data.slowest.map((t) => h("li", {},
          h("span", { class: "test-name", text: t.name }), h("span", { class: "test-num", text: `${t.mean.toFixed(1)} s` }))))))];
  }

  function renderNodes(data) {
    const order = ["healthy", "degraded", "unhealthy", "unknown", "disabled"];
    const counts = order.filter((k) => data.counts[k]).map((k) => h("span", { class: `count health-${k}`, text: `${data.counts[k]} ${k}` }));
    return [h("h2", { class: "panel-title", text: "Nodes" }),
      h("p", { class: "node-counts" }, counts.length ? counts : "no nodes", data.draining ? h("span", { class: "count", text: `${data.draining} draining` }) : null),
      h("ul", { class: "node-problems" }, data.problems.map((n) => h("li", { class: `health-${n.health}` }, badge(n.health === "unhealthy" ? "failed" : "error", n.health.toUpperCase()),
        h("span", { text: ` ${n.name} (${n.environment})` }), n.message ? h("span", { class: "quiet", text: ` ${n.message}` }) : null)),
      data.more ? h("li", { class: "quiet", text: `+${data.more} more` }) : null)];
  }

  const RENDERERS = {
    branches: renderBranches, train: renderTrain, builds: renderBuilds,
    environments: renderEnvironments, tests: renderTests, nodes: renderNodes,
  };

  function applyLayout(layout) {
    const order = layout.order || Object.keys(RENDERERS);
    for (const section of wall.querySelectorAll("[data-panel]")) {
      section.hidden = !order.includes(section.dataset.panel);
    }
    for (const name of order) {
      const section = wall.querySelector(`[data-panel="${name}"]`);
      if (section) wall.append(section); // the layout's order, kept on the server
    }
    wall.dataset.layout = order.join(" ");
  }

  function renderOverall() {
    const branches = panels.branches;
    const el = document.querySelector("[data-role=overall]");
    if (!branches || !el) return;
    const words = {
      red: `${branches.red} RED`, flaky: "FLAKY", all_green: "ALL GREEN",
      green_with_gaps: "GREEN · SOME WITHOUT RESULTS", no_results: "NO RESULTS",
    };
    const state = { red: "failed", flaky: "flaky", all_green: "passed", green_with_gaps: "passed", no_results: "no_results" }[branches.state];
    el.replaceChildren(badge(state, words[branches.state]));
    el.dataset.state = branches.state;
  }

  function apply(changed, meta) {
    if (meta && meta.now) {
      const server = Date.parse(meta.now);
      if (!Number.isNaN(server)) skewMs = server - Date.now();
    }
    Object.assign(panels, changed);
    if (changed.layout) applyLayout(changed.layout);
    for (const [name, render] of Object.entries(RENDERERS)) {
      if (!(name in changed)) continue;
      const section = wall.querySelector(`[data-panel="${name}"]`);
      if (section) section.replaceChildren(...render(changed[name]).flat().filter(Boolean));
    }
    if (changed.branches) {
      renderOverall();
      soundOnChange(changed.branches);
    }
    lastData = Date.now();
    renders += 1;
    wall.dataset.renders = String(renders);
    tick();
  }

  // Sound: on a change of state only (first break, fixed), never on every failure -----------

  function soundOnChange(branches) {
    const states = {};
    for (const tile of branches.tiles) states[tile.key] = tile.state;
    for (const key of branches.greens.names) states[key] = "passed";
    const before = previousStates;
    previousStates = states;
    if (!before || !(panels.layout && panels.layout.sound)) return;
    let change = null;
    for (const [key, state] of Object.entries(states)) {
      const was = before[key];
      if (RED.has(state) && was && !RED.has(was)) change = "break";
      else if (state === "passed" && RED.has(was) && change !== "break") change = "fixed";
    }
    if (change) beep(change);
  }

  function beep(kind) {
    const Context = window.AudioContext || window.webkitAudioContext;
    if (!Context) return;
    try {
      const audio = new Context();
      const notes = kind === "break" ? [440, 330] : [523, 784];
      notes.forEach((frequency, index) => {
        const osc = audio.createOscillator();
        const gain = audio.createGain();
        osc.frequency.value = frequency;
        gain.gain.value = 0.15;
        osc.connect(gain).connect(audio.destination);
        osc.start(audio.currentTime + index * 0.25);
        osc.stop(audio.currentTime + index * 0.25 + 0.2);
      });
      wall.dataset.lastSound = kind;
    } catch (error) {
      // A screen that may not play sound yet (no user gesture) stays silent.
    }
  }

  // Keeping current: live.js when present, else polling -------------------------------------

  async function poll() {
    try {
      const response = await fetch(body.dataset.snapshotUrl, {
        cache: "no-store", credentials: "same-origin", headers: { Accept: "application/json" },
      });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const snapshot = await response.json();
      apply(snapshot.panels, snapshot);
      if (!window.TrainyardLive) setStatus("polling");
    } catch (error) {
      if (!window.TrainyardLive) setStatus("reconnecting");
    }
  }

  function start() {
    const initial = document.getElementById("wall-snapshot");
    if (initial) {
      const snapshot = JSON.parse(initial.textContent);
      apply(snapshot.panels, snapshot);
    }
    if (window.TrainyardLive && typeof window.TrainyardLive.connect === "function" && "WebSocket" in window) {
      window.TrainyardLive.connect({
        url: body.dataset.socketUrl,
        onSnapshot: (all, meta) => apply(all, meta),
        onPanels: (changed, meta) => apply(changed, meta),
        onStatus: (state) => setStatus(state),
      });
    } else {
      setStatus("polling");
      setInterval(poll, POLL_MS);
    }
    setInterval(tick, 1000);
  }

  // Controls ----------------------------------------------------------------------------------

  const controls = document.querySelector("[data-role=controls]");

  function controlsUser() {
    return controls ? controls.dataset.username : "";
  }

  function csrfToken() {
    const meta = document.querySelector("meta[name=csrf-token]");
    if (meta && meta.content) return meta.content;
    const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
    return match ? decodeURIComponent(match[1]) : "";
  }

  function showResult(ok, message) {
    const out = document.querySelector("[data-role=result]");
    if (!out) return;
    out.textContent = message;
    out.dataset.ok = ok ? "1" : "0";
  }

  async function post(url, payload) {
    let answer;
    try {
      const response = await fetch(url, {
        method: "POST", credentials: "same-origin",
        headers: { "Content-Type": "application/json", Accept: "application/json", "X-CSRFToken": csrfToken() },
        body: JSON.stringify(payload),
      });
      answer = await response.json().catch(() => ({ ok: false, message: `HTTP ${response.status}` }));
    } catch (error) {
      answer = { ok: false, message: "the server did not answer" };
    }
    showResult(answer.ok, answer.message);
    if (answer.ok) poll(); // this screen at once; the others through the events
    return answer;
  }

  function command(name, args) {
    const payload = { command: name, args: args || [] };
    if (currentTrain && ["good", "bad", "force"].includes(name)) payload.train = currentTrain.id;
    return post(controls.dataset.commandUrl, payload);
  }

  function updateTrainControls() {
    if (!controls || !controls.dataset.commandUrl) return;
    const train = currentTrain;
    const me = controlsUser();
    const author = Boolean(train && train.authors.some((a) => a.username === me));
    const answerable = Boolean(train && ANSWERABLE.has(train.status));
    for (const button of controls.querySelectorAll("[data-action]")) {
      const action = button.dataset.action;
      if (action === "good" || action === "bad") button.hidden = !(author && answerable);
      if (action === "force") button.hidden = !(train && (answerable || train.status === "vetoed"));
    }
  }

  const DIALOGS = {
    bad: { title: "Veto this train", text: "Production will not get this train. Say why.", button: "Veto" },
    force: { title: "Force this train", text: "Skips waiting for the authors' answers.", button: "Force" },
    rollback: { title: "Roll production back", text: "Production goes back to its previous SHA.", button: "Roll back" },
  };

  function openDialog(action) {
    const dialog = document.querySelector("[data-role=dialog]");
    const spec = DIALOGS[action];
    dialog.dataset.action = action;
    dialog.querySelector("[data-role=dialog-title]").textContent = spec.title;
    const train = currentTrain && action !== "rollback" ? ` (train #${currentTrain.id}, ${currentTrain.head_sha.slice(0, 7)})` : "";
    dialog.querySelector("[data-role=dialog-text]").textContent = spec.text + train;
    dialog.querySelector("[data-role=dialog-confirm]").textContent = spec.button;
    dialog.querySelector("input[name=reason]").value = "";
    dialog.returnValue = "";
    dialog.showModal();
  }

  function setUpControls() {
    document.addEventListener("click", (event) => {
      const claim = event.target.closest("[data-claim]");
      if (claim) {
        post(`/radiators/${encodeURIComponent(claim.dataset.repository)}/claim`,
          { branch: claim.dataset.claim, release: Boolean(claim.dataset.release) });
      }
    });
    if (!controls || !controls.dataset.commandUrl) return;
    for (const button of controls.querySelectorAll("[data-action]")) {
      button.addEventListener("click", () => {
        const action = button.dataset.action;
        if (action === "good") command("good");
        else openDialog(action);
      });
    }
    const dialog = document.querySelector("[data-role=dialog]");
    dialog.addEventListener("close", () => {
      if (dialog.returnValue !== "confirm") return;
      const reason = dialog.querySelector("input[name=reason]").value.trim();
      // An empty reason is sent as it is: the server refuses it and says why.
      command(dialog.dataset.action, reason ? [reason] : []);
    });
    const buildForm = controls.querySelector("[data-role=build-form]");
    buildForm.addEventListener("submit", (event) => {
      event.preventDefault();
      const branch = buildForm.elements.branch.value.trim();
      if (branch) command("bb", [branch]);
    });
    const commandForm = controls.querySelector("[data-role=command-form]");
    commandForm.addEventListener("submit", (event) => {
      event.preventDefault();
      const text = commandForm.elements.text.value.trim();
      if (text) post(controls.dataset.commandUrl, { text });
    });
  }

  setUpControls();
  start();
})();
