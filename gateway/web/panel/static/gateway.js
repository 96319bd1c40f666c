"use strict";
(function () {
  // The gateway page is drawn on the server; its body is fetched again every 15 s while the tab is visible.
  const body = () => document.getElementById("gateway-body");
  setInterval(async () => {
    if (document.hidden) return;
    try {
      const response = await fetch(location.href, { credentials: "same-origin" });
      if (response.redirected || !response.ok) { location.reload(); return; }
      const doc = new DOMParser().parseFromString(await response.text(), "text/html");
      const fresh = doc.getElementById("gateway-body");
      if (fresh) body().replaceWith(fresh);
    } catch (err) { /* offline: the live banner says so */ }
  }, 15000);
  window.panel.live({ device() {} });
})();
