// Sortable cohort table: click a header to sort by it (numbers as numbers, empty cells last).
(function () {
  "use strict";
  var table = document.getElementById("cohort");
  var body = table.tBodies[0];
  var current = { col: -1, dir: 1 };
  function key(cell) {
    var raw = cell.getAttribute("data-sort") || cell.textContent.trim();
    var num = Number(raw);
    return raw === "" ? null : isNaN(num) ? raw.toLowerCase() : num;
  }
  table.tHead.addEventListener("click", function (e) {
    var th = e.target.closest("th");
    if (!th) return;
    var col = Number(th.getAttribute("data-col"));
    current.dir = current.col === col ? -current.dir : 1;
    current.col = col;
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a.cells[col]), y = key(b.cells[col]);
      if (x === null) return y === null ? 0 : 1;
      if (y === null) return -1;
      return (x < y ? -1 : x > y ? 1 : 0) * current.dir;
    });
    rows.forEach(function (r) { body.appendChild(r); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (c) {
      c.removeAttribute("aria-sort");
    });
    th.setAttribute("aria-sort", current.dir > 0 ? "ascending" : "descending");
  });
})();
