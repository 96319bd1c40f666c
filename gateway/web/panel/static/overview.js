"use strict";
(function () {
  const { fmtTime, fmtNumber } = window.panel;
  const table = document.getElementById("devices");
  const filter = document.getElementById("room-filter");
  const count = document.getElementById("online-count");
  const rows = new Map();
  for (const tr of table.tBodies[0].rows) rows.set(tr.dataset.device, tr);

  function applyFilter() {
    const room = filter.value;
    for (const tr of rows.values()) tr.hidden = room !== "" && tr.dataset.room !== room;
    const url = new URL(location.href);
    if (room) url.searchParams.set("room", room); else url.searchParams.delete("room");
    history.replaceState(null, "", url);
  }
  filter.addEventListener("change", applyFilter);

  function set(tr, field, text) {
    const cell = tr.querySelector(`[data-field="${field}"]`);
    if (cell && cell.textContent !== text) cell.textContent = text;
  }
  function countOnline() {
    let online = 0;
    for (const tr of rows.values()) if (tr.classList.contains("online")) online += 1;
    count.textContent = `${online} of ${rows.size} online`;
  }

  window.panel.live({
    device(row) {
      const tr = rows.get(row.id);
      if (!tr) return;
      tr.classList.toggle("online", row.online);
      tr.classList.toggle("offline", !row.online);
      tr.querySelector('[data-field="online"] .badge').textContent = row.online ? "online" : "offline";
      set(tr, "power", row.power == null ? "–" : (row.power ? "on" : "off"));
      set(tr, "fanSpeed", fmtNumber(row.fanSpeed, 0));
      set(tr, "pm25", fmtNumber(row.pm25));
      set(tr, "co2", fmtNumber(row.co2, 0));
      set(tr, "temperature", fmtNumber(row.temperature));
      set(tr, "humidity", fmtNumber(row.humidity));
      set(tr, "lastSeen", fmtTime(row.lastSeen));
      countOnline();
    },
  });
})();
