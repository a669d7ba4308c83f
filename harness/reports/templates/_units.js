// Unit table: click a header to sort (again to reverse; empty cells last), type to filter (every
// word must appear in the row), pick a status. No library, no network.
(function () {
  "use strict";
  var table = document.getElementById("units");
  if (!table) { return; }
  var body = table.tBodies[0];
  var headers = Array.prototype.slice.call(table.tHead.rows[0].cells);
  var filter = document.getElementById("unit-filter");
  var status = document.getElementById("unit-status");
  var count = document.getElementById("unit-count");

  function key(row, i, numeric) {
    var v = row.cells[i].getAttribute("data-v");
    if (v === null || v === "") { return null; }
    return numeric ? parseFloat(v) : v;
  }

  headers.forEach(function (th, i) {
    th.addEventListener("click", function () {
      var numeric = th.getAttribute("data-type") === "num";
      var dir = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
      headers.forEach(function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", dir === 1 ? "ascending" : "descending");
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = key(a, i, numeric), y = key(b, i, numeric);
        if (x === null) { return y === null ? 0 : 1; }
        if (y === null) { return -1; }
        return (x < y ? -1 : x > y ? 1 : 0) * dir;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });

  function apply() {
    var terms = filter.value.toLowerCase().split(/\s+/).filter(Boolean);
    var want = status.value, shown = 0;
    Array.prototype.forEach.call(body.rows, function (row) {
      var text = row.textContent.toLowerCase();
      var ok = terms.every(function (t) { return text.indexOf(t) >= 0; }) &&
               (!want || row.getAttribute("data-status") === want);
      row.hidden = !ok;
      if (ok) { shown += 1; }
    });
    count.textContent = shown + " of " + body.rows.length + " units shown";
  }
  filter.addEventListener("input", apply);
  status.addEventListener("change", apply);
  apply();
})();
