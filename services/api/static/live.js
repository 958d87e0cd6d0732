/* deskmail live updates: the ticket page and the queue views poll their /live
   address with the ETag they were rendered with. 304: nothing changed. 200: JSON
   {etag, fragments: {element id: server-rendered HTML}}, swapped in by id.

   What the agent is editing is never replaced: the reply form is not a fragment
   at all, and the change controls are swapped (with the form's version) only
   while the agent has not touched them and no "set status" is chosen; otherwise
   the old version stays, so saving reports the conflict instead of overwriting.

   Every few seconds while the tab is visible; slower while it is hidden, and
   slower still after errors. Served as a file: the CSP allows no inline script. */
(function () {
  "use strict";
  var root = document.querySelector("[data-live]");
  if (!root) { return; }
  var url = root.getAttribute("data-live");
  var etag = root.getAttribute("data-etag") || "";
  var VISIBLE_MS = 3000, HIDDEN_MS = 30000, MAX_MS = 60000;
  var failures = 0, timer = null, busy = false;
  var dirty = {};  // names of change controls the agent touched

  function changeArea() { return document.getElementById("change-fields"); }
  function touched(event) {
    var area = changeArea();
    var target = event.target;
    if (area && area.contains(target)) { dirty[target.name || target.id] = true; }
  }
  document.addEventListener("input", touched, true);
  document.addEventListener("change", touched, true);

  function statusChosen() {
    var select = document.getElementById("set_status");
    return select && select.value !== "";
  }
  function editingChanges() {
    var area = changeArea();
    if (!area) { return false; }
    if (Object.keys(dirty).length > 0) { return true; }
    return area.contains(document.activeElement);
  }

  function swap(id, html) {
    var element = document.getElementById(id);
    if (element) { element.innerHTML = html; }
  }

  function apply(data) {
    var parts = data.fragments || {};
    var keepChanges = editingChanges() || statusChosen();
    Object.keys(parts).forEach(function (id) {
      if (id === "change-fields" && keepChanges) { return; }
      swap(id, parts[id]);
    });
    if (data.version !== undefined) {
      var version = document.getElementById("version");
      if (version && !keepChanges) {
        version.value = String(data.version);
      } else if (version && version.value !== String(data.version)) {
        var notice = document.getElementById("live-notice");
        if (notice) { notice.hidden = false; }
      }
    }
    document.dispatchEvent(new CustomEvent("deskmail:updated"));
  }

  function delay() {
    var base = document.hidden ? HIDDEN_MS : VISIBLE_MS;
    return Math.min(MAX_MS, base * Math.pow(2, Math.min(failures, 4)));
  }
  function schedule() {
    if (timer) { clearTimeout(timer); }
    timer = setTimeout(poll, delay());
  }

  function poll() {
    timer = null;
    if (busy) { return schedule(); }
    busy = true;
    var headers = {"Accept": "application/json"};
    if (etag) { headers["If-None-Match"] = etag; }
    fetch(url, {headers: headers, credentials: "same-origin", cache: "no-store"})
      .then(function (r) {
        if (r.status === 304) { failures = 0; return null; }
        if (!r.ok) { throw new Error("live " + r.status); }
        failures = 0;
        return r.json();
      })
      .then(function (data) {
        if (!data) { return; }
        if (data.etag) { etag = data.etag; }
        apply(data);
      })
      .catch(function () { failures += 1; })
      .then(function () { busy = false; schedule(); });
  }

  document.addEventListener("visibilitychange", function () {
    // Back at once when the agent returns to the tab; hidden: the next poll waits longer.
    if (!document.hidden) { if (timer) { clearTimeout(timer); } poll(); } else { schedule(); }
  });
  schedule();
})();
