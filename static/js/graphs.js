// The VM page's graphs over time (uPlot): rates of bhyve's stats over the last 5 minutes, one small chart per quantity,
// fed by the /inspect stream: `graphs` (the server's history on watch) then `rates` (each tick's point).
"use strict";

const Graphs = (() => {
  const WINDOW_S = 300;
  const MIN_SPAN_S = 30;
  const TOP_REASONS = 4;
  // Colours that read on both themes' backgrounds (mid-tones); the axes and grid take the theme's own.
  const COLOURS = ["#3a8ee6", "#e07b39", "#3fae5a", "#c05bd0", "#d9a400"];
  const per = (stat) => (p) => (p.d[stat] || 0) / p.dt;
  const reasonLabel = (stat) => stat.replace("VMEXIT_", "").toLowerCase();

  // Each graph: its title, unit, source (shown under it) and series (label, value of one tick's point). The exits
  // graph's series are the total and the reasons counted most in the window, chosen again as the window moves.
  const GRAPHS = [
    {id: "exits", title: "VM exits", unit: "/s", source: "VMEXIT_COUNT and the VMEXIT_* reasons counted most",
      series: (points) => [["total", per("VMEXIT_COUNT")], ...topReasons(points).map((s) => [reasonLabel(s), per(s)])]},
    {id: "tlb", title: "TLB hit rate", unit: "%",
      source: "TLB_HITS / (TLB_HITS + TLB_MISSES) per tick; none without fills",
      series: () => [["hit rate", (p) => {
        const hits = p.d.TLB_HITS || 0, fills = hits + (p.d.TLB_MISSES || 0);
        return fills ? 100 * hits / fills : null;
      }]]},
    {id: "ept", title: "EPT first touches", unit: "/s", source: "EPT_FIRST_TOUCH: guest pages backed on first touch",
      series: () => [["first touches", per("EPT_FIRST_TOUCH")]]},
    {id: "l1d", title: "L1D flushes on VM entry", unit: "/s",
      source: "L1D_FLUSH_MSR (MSR-load list) and L1D_FLUSH_SW (software)",
      series: () => [["MSR-load list", per("L1D_FLUSH_MSR")], ["software", per("L1D_FLUSH_SW")]]},
    {id: "ipi", title: "IPIs", unit: "/s", source: "VLAPIC_IPI_SEND and VLAPIC_IPI_RECV",
      series: () => [["sent", per("VLAPIC_IPI_SEND")], ["received", per("VLAPIC_IPI_RECV")]]},
  ];

  let points = [];                 // the server's samples {t, dt, d}, oldest first, the last WINDOW_S seconds
  const charts = {};               // graph id → {plot, labels}

  function topReasons(window) {
    const totals = {};
    window.forEach((p) => Object.entries(p.d).forEach(([k, v]) => {
      if (k.startsWith("VMEXIT_") && k !== "VMEXIT_COUNT") totals[k] = (totals[k] || 0) + v;
    }));
    return Object.keys(totals).sort((a, b) => totals[b] - totals[a] || (a < b ? -1 : 1)).slice(0, TOP_REASONS);
  }

  // A rate as the page writes rates: decimal, at most one decimal place, with its unit.
  function rateText(value, unit) {
    if (value === null || value === undefined) return "—";
    return value.toLocaleString("en-US", {maximumFractionDigits: 1}) + (unit || "/s");
  }

  // A time tick as the browser's clock writes it, to the second, on 24 hours (shorter than 04:13:30 PM).
  function clock(t) {
    return new Date(t * 1000).toLocaleTimeString([], {hour: "2-digit", minute: "2-digit", second: "2-digit",
      hour12: false});
  }

  function themeColour(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  }

  function options(graph, labels, width) {
    const fg = themeColour("--muted"), grid = themeColour("--rule");
    const axis = {stroke: fg, grid: {stroke: grid, width: 1}, ticks: {stroke: grid, width: 1}, font: "11px sans-serif"};
    return {
      width, height: 120, legend: {show: false}, cursor: {drag: {x: false, y: false}},
      scales: {x: {time: true},
        y: {range: graph.unit === "%" ? [0, 100] : (u, min, max) => [0, Math.max(1, max * 1.1)]}},
      axes: [{...axis, space: 70, size: 30, values: (u, ticks) => ticks.map(clock)},
        {...axis, size: 56, values: (u, ticks) => ticks.map((v) => v.toLocaleString("en-US"))}],
      series: [{}, ...labels.map((label, i) => ({label, stroke: COLOURS[i % COLOURS.length], width: 1.5,
        spanGaps: false, points: {show: false}}))],
    };
  }

  function box(graph) {
    return document.querySelector('#graphs [data-graph="' + graph.id + '"]');
  }

  // Build the section's figures once: title, the chart's place, the readout of the newest values, the source.
  function layout() {
    const root = document.getElementById("graphs");
    root.replaceChildren(...GRAPHS.map((g) => WH.el("figure", {class: "graph", "data-graph": g.id},
      WH.el("figcaption", {}, g.title + " (" + (g.unit === "%" ? "percent" : "per second") + ")"),
      WH.el("div", {class: "graph-plot"}),
      WH.el("p", {class: "graph-now"}),
      WH.el("p", {class: "note graph-source"}, g.source))));
  }

  function draw(graph) {
    const series = graph.series(points);
    const labels = series.map(([label]) => label);
    const x = points.map((p) => p.t);
    const data = [x, ...series.map(([, value]) => points.map(value))];
    const el = box(graph), plotBox = el.querySelector(".graph-plot");
    const chart = charts[graph.id];
    if (!chart || chart.labels.join() !== labels.join()) {
      if (chart) chart.plot.destroy();
      const width = Math.max(120, plotBox.clientWidth);
      charts[graph.id] = {labels, plot: new uPlot(options(graph, labels, width), data, plotBox)};
    } else {
      chart.plot.setData(data, false);
    }
    // The time axis spans what the history holds: at least MIN_SPAN_S (a VM just booted), at most WINDOW_S.
    const last = x.length ? x[x.length - 1] : Date.now() / 1000, first = x.length ? x[0] : last;
    const min = Math.max(last - WINDOW_S, Math.min(first, last - MIN_SPAN_S));
    charts[graph.id].plot.setScale("x", {min, max: last});
    readout(graph, el, series, data);
  }

  // The newest tick's value of each series, beside its colour; each carries its raw value (data-series,
  // data-value) and the graph its number of points (data-points).
  function readout(graph, el, series, data) {
    el.dataset.points = String(points.length);
    el.querySelector(".graph-now").replaceChildren(...series.map(([label], i) => {
      const column = data[i + 1], value = column.length ? column[column.length - 1] : null;
      const raw = value === null ? "" : String(value);
      return WH.el("span", {class: "graph-value", "data-series": label, "data-value": raw},
        WH.el("i", {style: "background:" + COLOURS[i % COLOURS.length]}), label + " " + rateText(value, graph.unit));
    }));
  }

  function drawAll() {
    if (!document.getElementById("graphs").children.length) layout();
    GRAPHS.forEach(draw);
  }

  // The history the server kept (on watch and on every reconnect's watch): the graphs start full.
  function reset(history) {
    points = history.slice();
    drawAll();
  }

  // One tick's point; the same point twice (the watch's `rates` and its history) counts once.
  function add(point) {
    if (!point || (points.length && point.t <= points[points.length - 1].t)) return;
    points.push(point);
    while (points.length && points[0].t <= point.t - WINDOW_S) points.shift();
    drawAll();
  }

  // A new theme or a new width: the charts are drawn again with the theme's colours and their box's width.
  function rebuild() {
    Object.values(charts).forEach((c) => c.plot.destroy());
    Object.keys(charts).forEach((k) => delete charts[k]);
    if (document.getElementById("graphs").children.length) GRAPHS.forEach(draw);
  }
  new MutationObserver(rebuild).observe(document.documentElement, {attributes: true, attributeFilter: ["data-theme"]});
  window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", rebuild);
  let width = null;
  new ResizeObserver(() => {
    const w = document.getElementById("graphs").clientWidth;
    if (w !== width) { width = w; rebuild(); }
  }).observe(document.getElementById("graphs"));

  return {reset, add, rateText, chart: (id) => charts[id] && charts[id].plot};
})();
