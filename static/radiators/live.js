// TrainyardLive: keeps a wall's panels live over its websocket. No dependencies, no inline
// code (runs under the Content-Security-Policy).
//
//   const live = window.TrainyardLive.connect({
//     url,                              // default: <body data-socket-url>
//     onSnapshot(panels, meta),         // every panel: on connect, reconnect and resync
//     onPanels(changedPanels, meta),    // only the changed ones (maybe none: a heartbeat)
//     onStatus(state),                  // "live", "reconnecting" or "stale"
//   });                                 // meta = {seq, version, now}
//
// The server numbers its messages (seq + 1 each); a gap makes us ask for a snapshot
// ({"type": "resync"}, the only thing ever sent). A dropped socket is reopened with
// exponential backoff (capped, with jitter), and the server's snapshot on connecting
// brings the page up to date: no reload. "stale": nothing arrived for 30 s (the server
// says something every ~10 s, so a quiet wall is not stale). A new server `version`
// reloads the page. Close codes 4401/4403/4404/4410 (not allowed, bad origin, no such
// wall, kiosk token revoked) are final: no retry.
//
// Tuning for tests, from <body> data attributes: data-live-stale-after-ms,
// data-live-backoff-max-ms.
(function () {
  "use strict";

  const FINAL_CLOSE_CODES = new Set([4401, 4403, 4404, 4410]);
  const BACKOFF_MIN_MS = 500;
  const CONNECT_TIMEOUT_MS = 10000;

  function number(value, fallback) {
    const parsed = parseInt(value, 10);
    return Number.isFinite(parsed) && parsed > 0 ? parsed : fallback;
  }

  function socketUrl(url) {
    const absolute = new URL(url, window.location.href);
    if (absolute.protocol === "http:") absolute.protocol = "ws:";
    if (absolute.protocol === "https:") absolute.protocol = "wss:";
    return absolute.href;
  }

  function connect(options) {
    const data = document.body ? document.body.dataset : {};
    const url = socketUrl(options.url || data.socketUrl);
    const staleAfterMs = number(options.staleAfterMs || data.liveStaleAfterMs, 30000);
    const backoffMaxMs = number(options.backoffMaxMs || data.liveBackoffMaxMs, 15000);
    const noop = () => {};
    const onSnapshot = options.onSnapshot || noop;
    const onPanels = options.onPanels || noop;
    const onStatus = options.onStatus || noop;

    let socket = null;
    let seq = null; // the last seq applied; null: waiting for a snapshot
    let version = data.serverVersion || null;
    let lastArrival = Date.now();
    let attempts = 0;
    let retryTimer = null;
    let connectTimer = null;
    let status = null;
    let stopped = false;

    function setStatus(next) {
      if (next === status) return;
      status = next;
      onStatus(next);
    }

    function checkVersion(next) {
      if (version !== null && next !== version) {
        stopped = true; // the new page starts its own
        window.location.reload();
        return false;
      }
      version = next;
      return true;
    }

    function resync() {
      seq = null;
      if (socket && socket.readyState === WebSocket.OPEN) {
        socket.send(JSON.stringify({ type: "resync" }));
      }
    }

    function handle(message) {
      lastArrival = Date.now();
      if (!checkVersion(message.version)) return;
      const meta = { seq: message.seq, version: message.version, now: message.now };
      if (message.type === "snapshot") {
        seq = message.seq;
        attempts = 0; // this connection works
        setStatus("live");
        onSnapshot(message.panels, meta);
      } else if (message.type === "panels") {
        if (seq === null) return; // a resync is on its way
        if (message.seq !== seq + 1) {
          resync();
          return;
        }
        seq = message.seq;
        setStatus("live");
        onPanels(message.panels, meta);
      }
    }

    function open() {
      retryTimer = null;
      if (stopped) return;
      seq = null;
      const ws = new WebSocket(url);
      socket = ws;
      connectTimer = window.setTimeout(() => ws.close(), CONNECT_TIMEOUT_MS);
      ws.addEventListener("open", () => window.clearTimeout(connectTimer));
      ws.addEventListener("message", (event) => {
        if (ws !== socket) return;
        let message;
        try {
          message = JSON.parse(event.data);
        } catch (error) {
          return;
        }
        if (message && typeof message === "object") handle(message);
      });
      ws.addEventListener("close", (event) => {
        window.clearTimeout(connectTimer);
        if (ws !== socket) return;
        socket = null;
        if (stopped) return;
        if (FINAL_CLOSE_CODES.has(event.code)) {
          stopped = true;
          setStatus("stale");
          return;
        }
        setStatus(Date.now() - lastArrival > staleAfterMs ? "stale" : "reconnecting");
        schedule();
      });
    }

    function schedule() {
      if (retryTimer !== null || stopped) return;
      const ceiling = Math.min(backoffMaxMs, BACKOFF_MIN_MS * 2 ** attempts);
      attempts += 1;
      const delay = ceiling / 2 + Math.random() * (ceiling / 2); // jitter: no thundering herd
      retryTimer = window.setTimeout(open, delay);
    }

    function reconnectNow() {
      if (stopped || socket) return;
      window.clearTimeout(retryTimer);
      retryTimer = null;
      open();
    }

    // Stale: nothing for staleAfterMs. An open socket that went silent that long is
    // dead (a half-open connection): drop it and reconnect.
    const watchdog = window.setInterval(() => {
      if (stopped || Date.now() - lastArrival <= staleAfterMs) return;
      setStatus("stale");
      if (socket && socket.readyState === WebSocket.OPEN) socket.close(4000, "silent");
    }, Math.min(1000, staleAfterMs / 4));

    window.addEventListener("online", reconnectNow);
    open();

    return {
      get status() {
        return status;
      },
      get seq() {
        return seq;
      },
      resync,
      close() {
        stopped = true;
        window.clearInterval(watchdog);
        window.clearTimeout(retryTimer);
        window.removeEventListener("online", reconnectNow);
        if (socket) socket.close(1000, "page closed");
      },
    };
  }

  window.TrainyardLive = { connect };
})();
