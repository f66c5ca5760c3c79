// taskwarren dashboard: refreshes the overview's live counters from /api/overview.
// Values are written with textContent only, never as markup.
(function () {
  "use strict";
  var POLL_MS = 5000;
  var root = document.body.getAttribute("data-root") || "";

  function pick(data, path) {
    var value = data;
    var parts = path.split(".");
    for (var i = 0; i < parts.length; i++) {
      if (value === null || typeof value !== "object") { return null; }
      value = value[parts[i]];
    }
    return value === undefined ? null : value;
  }

  function show(element, value, isRate) {
    if (value === null) {
      element.textContent = "-";
    } else if (isRate) {
      element.textContent = Number(value).toFixed(1) + "/s";
    } else {
      element.textContent = String(value);
    }
  }

  function update(data) {
    document.querySelectorAll("[data-live]").forEach(function (element) {
      show(element, pick(data, element.getAttribute("data-live")), false);
    });
    var byName = {};
    (data.queues || []).forEach(function (queue) { byName[queue.name] = queue; });
    document.querySelectorAll("tr[data-queue]").forEach(function (row) {
      var queue = byName[row.getAttribute("data-queue")];
      if (!queue) { return; }
      row.querySelectorAll("[data-field]").forEach(function (cell) {
        var field = cell.getAttribute("data-field");
        show(cell, pick(queue, field), field.indexOf("rates.") === 0);
      });
    });
    var status = document.querySelector("[data-live-status]");
    if (status) {
      status.textContent = "(as of " + data.generated_at + ")";
      status.classList.remove("stale");
    }
  }

  // Each poll waits for the answer to the one before (a slow server is never asked
  // again while it is still working on the last question).
  function refresh() {
    fetch(root + "/api/overview", {headers: {"Accept": "application/json"},
                                   credentials: "same-origin"})
      .then(function (answer) {
        if (!answer.ok) { throw new Error("HTTP " + answer.status); }
        return answer.json();
      })
      .then(update)
      .catch(function () {
        var status = document.querySelector("[data-live-status]");
        if (status) { status.classList.add("stale"); }
      })
      .then(schedule);
  }

  function schedule() {
    window.setTimeout(refresh, POLL_MS);
  }

  if (document.querySelector("[data-live]")) {
    schedule();
  }
}());
