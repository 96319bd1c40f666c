// The device page: live readings, fan control, pre-clean, charts, schedules and command history.
// Every change goes through the REST API (window.panel.api): the panel has no control logic of its own.
"use strict";
(function () {
  const { api, live, fmtTime, fmtNumber } = window.panel;
  const data = JSON.parse(document.getElementById("page-data").textContent);
  const device = data.device;
  const finished = new Set(data.finished);
  const clockOffset = data.now - Date.now() / 1000; // the gateway's clock minus ours
  const gatewayNow = () => Date.now() / 1000 + clockOffset;
  const $ = (id) => document.getElementById(id);
  const DAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
  const controlled = $("command-status") !== null; // false for a device that takes no commands (a sensor)

  // ------------------------------------------------------------------------------- live readings
  let row = data.row;
  function drawRow() {
    const badge = $("device-status");
    badge.textContent = row.online ? "online" : "offline";
    badge.className = "badge " + (row.online ? "ok" : "bad");
    $("last-seen").textContent = fmtTime(row.lastSeen);
    $("reading-ts").textContent = fmtTime(row.ts);
    const list = $("readings");
    const fresh = document.createDocumentFragment();
    for (const [name, value] of Object.entries(row.metrics)) {
      const dt = document.createElement("dt"); dt.textContent = name;
      const dd = document.createElement("dd"); dd.dataset.metric = name;
      dd.textContent = typeof value === "number" ? fmtNumber(value, 2) : String(value);
      fresh.append(dt, dd);
    }
    list.replaceChildren(fresh);
    if (!controlled) return;
    $("reported-power").textContent = row.power == null ? "–" : (row.power ? "on" : "off");
    $("reported-fan").textContent = fmtNumber(row.fanSpeed, 0);
    const d = row.desired;
    $("desired").textContent = d ? `${d.powerOn ? "on" : "off"}, fan ${d.fanSpeed} (${d.layer})` : "–";
    for (const b of document.querySelectorAll("button.speed")) {
      b.setAttribute("aria-pressed", String(row.power !== false && Number(b.dataset.value) === row.fanSpeed));
    }
  }

  // ------------------------------------------------------------------------------------ commands
  const status = $("command-status");
  function showCommand(text, state) { status.textContent = text; status.dataset.state = state; }
  function describe(cmd) { return cmd.action === "setFanSpeed" ? `fan speed ${cmd.value}` : (cmd.action === "turnOn" ? "power on" : "power off"); }
  function outcome(cmd) {
    if (cmd.status === "acked") return ["acked", "acked"];
    if (finished.has(cmd.status)) return [`${cmd.status}${cmd.error ? ": " + cmd.error : ""}`, "failed"];
    return [cmd.note ? `pending (${cmd.note})` : "pending", "pending"];
  }
  async function follow(cmd) {
    // A command answered 202 (queued or not yet acked): its row in the audit log tells how it ended.
    for (let i = 0; i < 120 && !finished.has(cmd.status); i++) {
      await new Promise((r) => setTimeout(r, 1000));
      const page = await api("GET", `/api/device/${encodeURIComponent(device)}/commands?limit=20`);
      const found = page.data.data.find((c) => c.commandId === cmd.commandId);
      if (found) cmd = found;
      drawHistory(page.data.data);
    }
    const [text, state] = outcome(cmd);
    showCommand(`${describe(cmd)}: ${text}`, state);
  }
  for (const button of document.querySelectorAll("button.cmd")) {
    button.addEventListener("click", async () => {
      const body = { action: button.dataset.action, wait: true };
      if (button.dataset.value !== undefined) body.value = Number(button.dataset.value);
      showCommand(`${describe(body)}: pending`, "pending");
      try {
        const r = await api("POST", `/api/device/${encodeURIComponent(device)}/command`, body);
        const [text, state] = outcome(r.data);
        showCommand(`${describe(r.data)}: ${text}`, state);
        refreshHistory();
        if (state === "pending") follow(r.data);
      } catch (err) {
        if (err.data && err.data.commandId) { // 502 / 504: the device refused it or never answered
          const [text, state] = outcome(err.data);
          showCommand(`${describe(err.data)}: ${text}`, state);
          refreshHistory();
        } else {
          showCommand(`${describe(body)}: refused: ${err.message}`, "failed");
        }
      }
    });
  }

  // ----------------------------------------------------------------------------------- pre-clean
  let preclean = data.preclean;
  const precleanState = $("preclean-state");
  const cancel = $("preclean-cancel");
  function drawPreclean() {
    if (!controlled) return;
    if (!preclean.active) { precleanState.textContent = "Not running."; cancel.hidden = true; return; }
    const left = Math.max(0, Math.round(preclean.endsAt - gatewayNow()));
    const m = Math.floor(left / 60), s = String(left % 60).padStart(2, "0");
    precleanState.innerHTML = "";
    precleanState.append(`Running at speed ${preclean.fanSpeed}: `);
    const strong = document.createElement("strong"); strong.id = "preclean-countdown"; strong.textContent = `${m}:${s}`;
    precleanState.append(strong, ` left (until ${fmtTime(preclean.endsAt)})`);
    cancel.hidden = false;
    if (left === 0) refreshPreclean();
  }
  async function refreshPreclean() {
    preclean = (await api("GET", `/api/preclean/status/${encodeURIComponent(device)}`)).data;
    drawPreclean();
  }
  setInterval(() => { if (preclean.active) drawPreclean(); }, 1000);
  if (controlled) $("preclean-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      preclean = (await api("POST", "/api/preclean", {
        deviceId: device, fanSpeed: Number($("preclean-speed").value), minutes: Number($("preclean-minutes").value),
      })).data;
      drawPreclean();
      refreshHistory();
    } catch (err) { precleanState.textContent = "Refused: " + err.message; }
  });
  if (controlled) cancel.addEventListener("click", async () => {
    try { preclean = (await api("POST", "/api/preclean/cancel", { deviceId: device })).data; drawPreclean(); refreshHistory(); }
    catch (err) { precleanState.textContent = "Cancel refused: " + err.message; }
  });

  // ------------------------------------------------------------------------------------- history
  function drawHistory(rows) {
    const body = $("history").tBodies[0];
    const fresh = document.createDocumentFragment();
    for (const c of rows) {
      const tr = document.createElement("tr");
      tr.dataset.command = c.commandId;
      const [text, state] = outcome(c);
      const source = c.cause && c.cause !== c.source ? `${c.source} (${c.cause})` : c.source; // reconcile (preclean)
      const cells = [[fmtTime(c.createdAt), ""], [describe(c), ""], [source, ""], [c.status, "status-" + state],
                     [String(c.attempts), ""], [c.error || c.note || "", ""]];
      for (const [value, cls] of cells) {
        const td = document.createElement("td"); td.textContent = value; if (cls) td.className = cls; tr.append(td);
      }
      tr.title = text;
      fresh.append(tr);
    }
    body.replaceChildren(fresh);
  }
  let historyTimer = null;
  function refreshHistory() {
    clearTimeout(historyTimer);
    historyTimer = setTimeout(async () => {
      const page = await api("GET", `/api/device/${encodeURIComponent(device)}/commands?limit=50`);
      drawHistory(page.data.data);
    }, 300);
  }

  // ------------------------------------------------------------------------------------ schedules
  let schedules = data.schedules;
  let editing = null;
  const svgNS = "http://www.w3.org/2000/svg";
  function svg(tag, attrs, text) {
    const el = document.createElementNS(svgNS, tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    if (text !== undefined) el.textContent = text;
    return el;
  }
  const minutes = (hhmm) => { const [h, m] = hhmm.split(":").map(Number); return h * 60 + m; };
  function drawWeek() {
    const week = $("week");
    const left = 40, top = 18, hourW = 30, dayH = 24;
    const parts = [];
    for (let h = 0; h <= 24; h += 3) {
      parts.push(svg("line", { x1: left + h * hourW, y1: top - 4, x2: left + h * hourW, y2: top + 7 * dayH, class: "grid" }));
      parts.push(svg("text", { x: left + h * hourW, y: 12, class: "tick", "text-anchor": "middle" }, `${String(h).padStart(2, "0")}`));
    }
    DAYS.forEach((d, i) => {
      parts.push(svg("text", { x: 4, y: top + i * dayH + 16, class: "day" }, d));
      parts.push(svg("rect", { x: left, y: top + i * dayH + 2, width: 24 * hourW, height: dayH - 4, class: "lane" }));
    });
    for (const s of schedules) {
      const start = minutes(s.start), end = minutes(s.end);
      for (const name of s.days) {
        const day = DAYS.indexOf(name.slice(0, 3));
        const pieces = start < end ? [[day, start, end]] : [[day, start, 1440], [(day + 1) % 7, 0, end]];
        for (const [d, a, b] of pieces) {
          if (b <= a) continue;
          const rect = svg("rect", {
            x: left + (a / 60) * hourW, y: top + d * dayH + 2, width: ((b - a) / 60) * hourW, height: dayH - 4,
            class: `window speed-${s.fanSpeed}${s.enabled ? "" : " disabled"}`,
          });
          rect.append(svg("title", {}, `${name} ${s.start}–${s.end}, speed ${s.fanSpeed}${s.enabled ? "" : " (disabled)"}`));
          parts.push(rect);
        }
      }
    }
    week.replaceChildren(...parts);
  }
  function drawSchedules() {
    if (!controlled) return;
    const body = $("schedules").tBodies[0];
    const fresh = document.createDocumentFragment();
    for (const s of schedules) {
      const tr = document.createElement("tr");
      tr.dataset.schedule = s.id;
      for (const value of [s.days.join(", "), s.start, s.end, String(s.fanSpeed), s.enabled ? "yes" : "no"]) {
        const td = document.createElement("td"); td.textContent = value; tr.append(td);
      }
      const actions = document.createElement("td");
      if (document.getElementById("schedule-form")) {
        const edit = document.createElement("button");
        edit.type = "button"; edit.textContent = "Edit"; edit.setAttribute("aria-label", `Edit schedule ${s.id}`);
        edit.addEventListener("click", () => startEdit(s));
        const del = document.createElement("button");
        del.type = "button"; del.textContent = "Delete"; del.setAttribute("aria-label", `Delete schedule ${s.id}`);
        del.addEventListener("click", () => removeSchedule(s));
        actions.append(edit, " ", del);
      }
      tr.append(actions);
      fresh.append(tr);
    }
    if (!schedules.length) {
      const tr = document.createElement("tr"); const td = document.createElement("td");
      td.colSpan = 6; td.textContent = "No schedule."; tr.append(td); fresh.append(tr);
    }
    body.replaceChildren(fresh);
    drawWeek();
  }
  async function reloadSchedules() {
    schedules = (await api("GET", `/api/schedule/${encodeURIComponent(device)}`)).data;
    drawSchedules();
  }
  const form = $("schedule-form");
  function startEdit(s) {
    editing = s.id;
    for (const box of form.querySelectorAll('input[name="day"]')) box.checked = s.days.includes(box.value);
    $("schedule-start").value = s.start; $("schedule-end").value = s.end;
    $("schedule-speed").value = String(s.fanSpeed); $("schedule-enabled").checked = s.enabled;
    $("schedule-legend").textContent = `Edit schedule ${s.id}`;
    $("schedule-save").textContent = "Save schedule";
    $("schedule-reset").hidden = false;
    $("schedule-start").focus();
  }
  function resetForm() {
    editing = null;
    $("schedule-legend").textContent = "New schedule";
    $("schedule-save").textContent = "Add schedule";
    $("schedule-reset").hidden = true;
  }
  async function removeSchedule(s) {
    if (!confirm(`Delete the schedule ${s.days.join(", ")} ${s.start}–${s.end}?`)) return;
    await api("DELETE", `/api/schedule/${s.id}`);
    if (editing === s.id) resetForm();
    await reloadSchedules();
  }
  if (form) {
    $("schedule-reset").addEventListener("click", resetForm);
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const error = $("schedule-error");
      error.hidden = true;
      const body = {
        days: [...form.querySelectorAll('input[name="day"]:checked')].map((b) => b.value),
        start: $("schedule-start").value, end: $("schedule-end").value,
        fanSpeed: Number($("schedule-speed").value), enabled: $("schedule-enabled").checked,
      };
      try {
        if (editing === null) await api("POST", "/api/schedule", { deviceId: device, ...body });
        else await api("PUT", `/api/schedule/${editing}`, body);
        resetForm();
        await reloadSchedules();
      } catch (err) { error.textContent = err.message; error.hidden = false; }
    });
  }

  // --------------------------------------------------------------------------------------- charts
  const charts = new Map();
  let span = "hour";
  let seriesData = null;
  let chartRange = [0, 1];
  function chartWidth(fig) { return Math.max(240, fig.clientWidth - 8); }
  async function loadCharts() {
    const r = await api("GET", `/panel/series/${encodeURIComponent(device)}?span=${span}`);
    seriesData = r.data.series;
    chartRange = [r.data.from, r.data.to];
    for (const fig of document.querySelectorAll("figure.chart")) {
      const metric = fig.dataset.metric;
      const values = seriesData[metric];
      const empty = !values.some((v) => v !== null);
      fig.hidden = empty && metric === "co2"; // CO2 only where the device measures it
      const plot = fig.querySelector(".plot");
      if (charts.has(metric)) { charts.get(metric).destroy(); charts.delete(metric); }
      if (fig.hidden) continue;
      const opts = {
        width: chartWidth(fig), height: 160, legend: { show: false }, cursor: { drag: { x: false, y: false } },
        scales: { x: { time: true, range: () => chartRange } }, // the whole span, however few points
        series: [{}, { label: metric, stroke: "#1f6feb", width: 2, spanGaps: false,
                       points: { show: values.filter((v) => v !== null).length < 60 } }],
        axes: [{ stroke: "#555" }, { stroke: "#555", size: 50 }],
        tzDate: (ts) => uPlot.tzDate(new Date(ts * 1e3), window.panel.meta("gateway-timezone") || "UTC"),
      };
      charts.set(metric, new uPlot(opts, [seriesData.ts.slice(), values.slice()], plot));
      plot.setAttribute("aria-label", `${metric} over the last ${span}${empty ? ": no data" : ""}`);
      plot.setAttribute("role", "img");
    }
  }
  function appendLive(r) {
    if (span !== "hour" || !seriesData || r.ts == null) return;
    const bucket = Math.floor(r.ts / 10) * 10;
    const ts = seriesData.ts;
    if (ts.length && ts[ts.length - 1] >= bucket) return;
    ts.push(bucket);
    chartRange = [Math.max(chartRange[0], r.ts - 3600), Math.max(chartRange[1], r.ts)];
    for (const [metric, chart] of charts) {
      const v = r[metric];
      seriesData[metric].push(typeof v === "number" ? v : null);
      chart.setData([ts.slice(), seriesData[metric].slice()]);
    }
  }
  for (const button of document.querySelectorAll("button.span")) {
    button.addEventListener("click", () => {
      span = button.dataset.span;
      for (const b of document.querySelectorAll("button.span")) b.setAttribute("aria-pressed", String(b === button));
      loadCharts();
    });
  }
  window.addEventListener("resize", () => {
    for (const fig of document.querySelectorAll("figure.chart")) {
      const chart = charts.get(fig.dataset.metric);
      if (chart) chart.setSize({ width: chartWidth(fig), height: 160 });
    }
  });

  // ---------------------------------------------------------------------------------------- start
  drawRow();
  drawPreclean();
  drawHistory(data.history);
  drawSchedules();
  loadCharts();
  live({
    device(update) {
      if (update.id !== device) return;
      const controlChanged = JSON.stringify(update.desired) !== JSON.stringify(row.desired)
        || update.power !== row.power || update.fanSpeed !== row.fanSpeed;
      row = update;
      drawRow();
      appendLive(update);
      if (controlChanged) {
        refreshHistory();
        if (controlled && (update.desired && update.desired.layer === "preclean") !== preclean.active) refreshPreclean();
      }
    },
  });
})();
