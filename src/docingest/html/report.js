(function () {
  "use strict";
  function key(cell) {
    var v = cell.getAttribute("data-v");
    if (v === null) { return cell.textContent.toLowerCase(); }
    var n = parseFloat(v);
    return isNaN(n) ? v : n;
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    table.querySelectorAll("th.sortable").forEach(function (th, col) {
      th.addEventListener("click", function () {
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        var dir = th.getAttribute("data-dir") === "desc" ? 1 : -1;
        th.setAttribute("data-dir", dir === 1 ? "asc" : "desc");
        rows.sort(function (a, b) {
          var x = key(a.cells[col]), y = key(b.cells[col]);
          return x < y ? -dir : x > y ? dir : 0;
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  });
  var charts = document.querySelectorAll("svg.chart");
  var marks = document.querySelectorAll("svg.chart rect, svg.chart circle").length;
  document.body.setAttribute("data-charts", String(charts.length));
  document.body.setAttribute("data-marks", String(marks));
  document.body.setAttribute("data-file-rows", String(document.querySelectorAll("#files tbody tr").length));
  document.body.setAttribute("data-rendered", "1");
})();
