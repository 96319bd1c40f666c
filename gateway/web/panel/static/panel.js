// Shared by every logged-in page: the REST API with the session's CSRF token, the live stream with its
// stale indicator and reconnects, times in the gateway's zone, logout.
"use strict";
(function () {
  const meta = (name) => { const m = document.querySelector(`meta[name="${name}"]`); return m ? m.content : ""; };
  const zone = meta("gateway-timezone") || undefined;
  const keepaliveMs = Number(meta("live-keepalive-ms")) || 10000;
  const timeFormat = new Intl.DateTimeFormat("sv-SE", {
    timeZone: zone, year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit",
    second: "2-digit", hour12: false,
  });

  function fmtTime(ts) { return ts == null || ts === "" ? "never" : timeFormat.format(new Date(Number(ts) * 1000)); }
  function fmtNumber(value, digits) {
    if (typeof value !== "number") return "–";
    return Number.isInteger(value) ? String(value) : value.toFixed(digits === undefined ? 1 : digits);
  }
  function loginUrl() { return "/login?next=" + encodeURIComponent(location.pathname + location.search); }

  // fetch() against our own API: JSON both ways, the CSRF header on every state change.
  async function api(method, url, body) {
    const headers = { "Accept": "application/json" };
    if (method !== "GET") headers["X-CSRF-Token"] = meta("csrf-token");
    const init = { method, headers, credentials: "same-origin" };
    if (body !== undefined) { headers["Content-Type"] = "application/json"; init.body = JSON.stringify(body); }
    const response = await fetch(url, init);
    if (response.status === 401) { location.assign(loginUrl()); throw new Error("not logged in"); }
    const text = await response.text();
    const data = text ? JSON.parse(text) : null;
    if (!response.ok) {
      const message = data && data.error ? data.error.message : response.statusText;
      const error = new Error(message); error.status = response.status; error.data = data; throw error;
    }
    return { status: response.status, data };
  }

  // The live stream: EventSource reconnects by itself after a dropped connection; after a refused one
  // (readyState CLOSED) we ask whether we are still logged in, then open a new one. The banner says
  // "stale" when nothing (not even a ping) arrived for 2.5 keepalive intervals.
  function live(handlers) {
    const banner = document.getElementById("live-status");
    let source = null;
    let lastMessage = 0;
    let retryTimer = null;
    function show(state, text) { if (banner) { banner.dataset.state = state; banner.textContent = text; } }
    function seen() {
      if (lastMessage === 0 || banner.dataset.state !== "live") show("live", "Live");
      lastMessage = Date.now();
    }
    function open() {
      source = new EventSource("/panel/events");
      source.addEventListener("open", seen);
      source.addEventListener("ping", seen);
      source.addEventListener("device", (e) => { seen(); handlers.device(JSON.parse(e.data)); });
      source.addEventListener("reload", () => location.reload());
      source.addEventListener("expired", () => { source.close(); location.assign(loginUrl()); });
      source.addEventListener("error", () => {
        show("stale", lastMessage ? "Stale since " + fmtTime(lastMessage / 1000) + " · reconnecting" : "Reconnecting…");
        if (source.readyState === EventSource.CLOSED && retryTimer === null) {
          retryTimer = setTimeout(async () => {
            retryTimer = null;
            try {
              const r = await fetch("/panel/session", { credentials: "same-origin" });
              if (r.status === 401) { location.assign(loginUrl()); return; }
            } catch (err) { /* the gateway is unreachable: try the stream again */ }
            open();
          }, 2000);
        }
      });
    }
    setInterval(() => {
      if (lastMessage && Date.now() - lastMessage > keepaliveMs * 2.5 && banner.dataset.state === "live") {
        show("stale", "Stale since " + fmtTime(lastMessage / 1000) + " · reconnecting");
        source.close(); open();
      }
    }, 1000);
    open();
  }

  const logout = document.getElementById("logout");
  if (logout) {
    logout.addEventListener("click", async () => {
      try { const r = await api("POST", "/logout"); location.assign(r.data.next); }
      catch (err) { location.assign("/login"); }
    });
  }

  window.panel = { api, live, fmtTime, fmtNumber, meta };
})();
