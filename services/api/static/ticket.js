/* deskmail ticket page: poll delivery status while a mail is queued or retrying.
   Served as a file: the page's Content-Security-Policy allows no inline script. */
(function () {
  "use strict";
  var ticket = document.querySelector(".ticket[data-deliveries]");
  if (!ticket) { return; }
  var url = ticket.getAttribute("data-deliveries");
  function pending() {
    return document.querySelectorAll('.badge[data-status="queued"], .badge[data-status="retrying"]').length > 0;
  }
  function tick() {
    if (!pending()) { return; }
    fetch(url, {headers: {"Accept": "application/json"}, credentials: "same-origin"})
      .then(function (r) { return r.ok ? r.json() : []; })
      .then(function (list) {
        list.forEach(function (d) {
          var badge = document.getElementById("status-" + d.comment_id);
          if (!badge || !d.status) { return; }
          badge.dataset.status = d.status;
          badge.className = "badge status-" + d.status;
          badge.textContent = d.status;
          badge.title = d.detail || "";
          var detail = document.getElementById("detail-" + d.comment_id);
          if (detail) { detail.textContent = d.detail || ""; }
        });
      })
      .catch(function () {})
      .then(function () { setTimeout(tick, 2000); });
  }
  setTimeout(tick, 2000);
})();
