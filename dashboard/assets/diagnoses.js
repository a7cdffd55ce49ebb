// Diagnoses: links from the strip to the evidence panels, and marker lines on them.
(function () {
  "use strict";
  var COLORS = { critical: "#d62728", warning: "#ff7f0e", info: "#7f7f7f" };

  function cards() {
    // Dash renders dict ids as JSON in the id attribute.
    var out = [];
    document.querySelectorAll("[id^='{']").forEach(function (el) {
      try {
        var id = JSON.parse(el.id);
        out.push({ el: el, id: id });
      } catch (e) { /* not a dict id */ }
    });
    return out;
  }

  function panelOf(instrument, grid) {
    var panels = (grid && grid.panels) || {};
    for (var pid in panels) {
      var members = panels[pid].members || [];
      for (var i = 0; i < members.length; i++) {
        if (members[i].name === instrument) { return pid; }
      }
    }
    return instrument;
  }

  document.addEventListener("click", function (ev) {
    var a = ev.target.closest("[data-panel]");
    if (!a) { return; }
    ev.preventDefault();
    var grid = window.glasscockpitGrid;
    var pid = panelOf(a.getAttribute("data-panel"), grid);
    cards().forEach(function (c) {
      if (c.id.type === "instrument-card" && c.id.name === pid) {
        c.el.scrollIntoView({ behavior: "smooth", block: "center" });
        c.el.classList.add("diagnosis-flash");
        setTimeout(function () { c.el.classList.remove("diagnosis-flash"); }, 1500);
      }
    });
  });

  // Adds dotted vertical lines at the diagnosed steps to the evidence panels.
  window.glasscockpitMarks = function (marks, grid) {
    window.glasscockpitGrid = grid;
    if (!window.Plotly) { return 0; }
    var byPanel = {};
    Object.keys(marks || {}).forEach(function (inst) {
      var pid = panelOf(inst, grid);
      byPanel[pid] = (byPanel[pid] || []).concat(marks[inst]);
    });
    var drawn = 0;
    cards().forEach(function (c) {
      if (c.id.type !== "instrument-graph") { return; }
      var gd = c.el.classList.contains("js-plotly-plot")
        ? c.el : c.el.querySelector(".js-plotly-plot");
      if (!gd || !gd.layout) { return; }
      var want = (byPanel[c.id.name] || []).map(function (m) {
        return {
          type: "line", xref: "x", yref: "paper", x0: m[0], x1: m[0], y0: 0, y1: 1,
          line: { color: COLORS[m[1]] || "#d62728", width: 1, dash: "dot" },
          name: "diagnosis: " + m[2], layer: "above"
        };
      });
      var keep = (gd.layout.shapes || []).filter(function (s) {
        return !(s.name && String(s.name).indexOf("diagnosis: ") === 0);
      });
      var had = (gd.layout.shapes || []).length - keep.length;
      if (had === want.length && (want.length === 0 || gd.dataset.diagMarks === JSON.stringify(want))) {
        return;
      }
      gd.dataset.diagMarks = JSON.stringify(want);
      window.Plotly.relayout(gd, { shapes: keep.concat(want) });
      drawn += want.length;
    });
    return drawn;
  };
})();
