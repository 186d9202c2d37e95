// The device page's charts: one figure per metric under #charts, each a uPlot line chart of its
// series (series.js). Tests read what each chart draws from window.fieldhub.charts.

import { lineChart } from "./charts.js";
import { US, formatValue } from "./format.js";

const HEIGHT = 200;

export class MetricCharts {
  constructor(container) {
    this.container = container;
    // metric -> {x: [us], y: [], n: [], plot, el}; no prototype, so a metric named `constructor`
    // or `__proto__` is a chart like any other.
    this.byMetric = Object.create(null);
  }

  // The metrics the server rendered a figure for.
  rendered() {
    return [...this.container.querySelectorAll("[data-chart]")].map((el) => el.dataset.chart);
  }

  metrics() {
    return Object.keys(this.byMetric);
  }

  // The metric's series, with its figure (created when the metric is new to the page).
  series(metric) {
    if (!this.byMetric[metric]) this.byMetric[metric] = { x: [], y: [], n: [], plot: null, el: this.figure(metric) };
    return this.byMetric[metric];
  }

  figure(metric) {
    let el = this.container.querySelector(`[data-chart="${CSS.escape(metric)}"]`);
    if (!el) {
      document.getElementById("no-metrics")?.remove();
      el = document.createElement("figure");
      el.className = "chart";
      el.dataset.chart = metric;
      el.innerHTML = '<figcaption><span class="metric"></span> <span class="value"></span></figcaption><div class="plot"></div>';
      el.querySelector(".metric").textContent = metric;
      el.querySelector(".value").dataset.metric = metric;
      this.container.append(el);
    }
    return el;
  }

  draw(metric) {
    const c = this.byMetric[metric];
    const data = [c.x.map((us) => us / US), c.y];
    if (c.plot) { c.plot.setData(data); return; }
    const options = { cursor: { drag: { x: false, y: false } } };
    c.plot = lineChart(c.el.querySelector(".plot"), { label: metric, height: HEIGHT, options }, data);
  }

  // The caption's value: the newest reading, whatever order readings arrive in.
  showLatest(metric, ts, value) {
    const cell = this.figure(metric).querySelector(".value");
    if (ts < Number(cell.dataset.ts || 0)) return;
    cell.dataset.ts = String(ts);
    cell.textContent = formatValue(value);
  }

  expose() {
    window.fieldhub.charts = Object.fromEntries(
      Object.entries(this.byMetric).map(([m, c]) => [m, { x: c.x, y: c.y }]),
    );
  }
}
