// bitbench leaderboard: sortable and filterable tables (vanilla JS, no dependencies, inlined into each page).
//
// Markup it expects (written by leaderboard/site.py):
//   <table class="board">  <th data-type="num|text" data-better="lower|higher|"><button>Title</button></th>
//   <td data-sort="0.0586" data-bound="1">   number to sort on (absent: missing, always sorted last);
//                                            data-bound: 1 for a lower bound ("> 100"), -1 for an upper bound
//   <tr data-filter="lowercase words">       what the filter box matches (entry, defense, model)
//   <input id="filter" hidden>               the filter box (shown only when this script runs)
//   <span class="count" data-table="ID">     "n of m rows" of table ID
(function () {
  "use strict";

  function numKey(td) {
    var s = td.getAttribute("data-sort");
    if (s === null || s === "") return null;
    var v = Number(s);
    return isNaN(v) ? null : v;
  }

  function textKey(td) {
    var s = td.getAttribute("data-sort");
    if (s === null) s = td.textContent;
    s = s.trim().toLowerCase();
    return s === "" || s === "\u2013" ? null : s;
  }

  function bound(td) {
    var b = td.getAttribute("data-bound");
    return b === null ? 0 : Number(b);
  }

  function sortTable(table, col, th) {
    var numeric = th.getAttribute("data-type") === "num";
    var current = th.getAttribute("aria-sort");
    var dir;
    if (current === "ascending") dir = -1;
    else if (current === "descending") dir = 1;
    else dir = th.getAttribute("data-better") === "higher" ? -1 : 1;  // first click: best first
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var keyed = rows.map(function (tr, i) {
      var td = tr.cells[col];
      return {tr: tr, key: numeric ? numKey(td) : textKey(td), bound: numeric ? bound(td) : 0,
              index: Number(tr.getAttribute("data-index") || i)};
    });
    keyed.sort(function (a, b) {
      if (a.key === null || b.key === null) {  // missing values last, whatever the direction
        if (a.key === null && b.key === null) return a.index - b.index;
        return a.key === null ? 1 : -1;
      }
      var c = 0;
      if (a.key < b.key) c = -1;
      else if (a.key > b.key) c = 1;
      else c = a.bound - b.bound;  // "> 100" is above 100
      return c !== 0 ? dir * c : a.index - b.index;
    });
    keyed.forEach(function (k) { body.appendChild(k.tr); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", dir === 1 ? "ascending" : "descending");
  }

  function setupSorting(table) {
    var head = table.tHead.rows[0];
    Array.prototype.forEach.call(table.tBodies[0].rows, function (tr, i) {
      tr.setAttribute("data-index", String(i));
    });
    Array.prototype.forEach.call(head.cells, function (th, col) {
      var button = th.querySelector("button");
      if (button) button.addEventListener("click", function () { sortTable(table, col, th); });
    });
  }

  function applyFilter(input) {
    var words = input.value.toLowerCase().split(/\s+/).filter(function (w) { return w !== ""; });
    Array.prototype.forEach.call(document.querySelectorAll("table.board"), function (table) {
      var shown = 0, total = 0;
      Array.prototype.forEach.call(table.tBodies[0].rows, function (tr) {
        var text = tr.getAttribute("data-filter") || "";
        var ok = words.every(function (w) { return text.indexOf(w) !== -1; });
        tr.hidden = !ok;
        total += 1;
        if (ok) shown += 1;
      });
      var count = document.querySelector('.count[data-table="' + table.id + '"]');
      if (count) count.textContent = shown === total ? total + " rows" : shown + " of " + total + " rows";
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    Array.prototype.forEach.call(document.querySelectorAll("table.board"), setupSorting);
    var input = document.getElementById("filter");
    if (input) {
      input.hidden = false;
      input.addEventListener("input", function () { applyFilter(input); });
      applyFilter(input);
    }
  });
})();
