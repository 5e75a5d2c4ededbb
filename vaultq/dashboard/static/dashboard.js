// vaultq dashboard: live updates by polling. The page's <main data-poll="URL"> is
// re-fetched every data-interval ms and swapped in. No inline scripts, no third-party
// code: the Content-Security-Policy allows only this file. The fetched HTML is the
// server's own, escaped output (vaultq/dashboard/html.py).
(function () {
  "use strict";
  var main = document.getElementById("main");
  if (!main || !main.dataset.poll) { return; }
  var every = parseInt(main.dataset.interval || "2000", 10);
  var busy = false;
  function refresh() {
    if (busy || document.hidden) { return; }
    busy = true;
    fetch(main.dataset.poll, { credentials: "same-origin", headers: { "X-Vaultq-Poll": "1" } })
      .then(function (reply) {
        if (reply.status === 200) { return reply.text(); }
        if (reply.status === 401 || reply.status === 403) { window.location.reload(); }
        return null;
      })
      .then(function (html) {
        if (html !== null) { main.innerHTML = html; }
      })
      .catch(function () { /* the next tick tries again */ })
      .finally(function () { busy = false; });
  }
  window.setInterval(refresh, every);
})();
