// uPlot line charts (vendored and pinned: vendor/README.md), shared by the device and system pages.

import uPlot from "./vendor/uplot/uPlot.esm.js";

const compact = new Intl.NumberFormat(undefined, { notation: "compact", maximumFractionDigits: 3 });
// Axis labels in compact form (3.54M): full digits would need more room than a phone has.
const axisValues = (u, splits) => splits.map((v) => compact.format(v));
const Y_AXIS_SIZE = 56;
const MIN_WIDTH = 200;

function axes(css) {
  const stroke = css.getPropertyValue("--muted");
  const grid = { stroke: css.getPropertyValue("--grid") };
  return [{ stroke, grid }, { stroke, grid, size: Y_AXIS_SIZE, values: axisValues }];
}

// A time series of one line in `box`, as wide as the box (followed on resize) and `height` tall.
// `data` is uPlot's [[x seconds], [y]]; `options` adds to or overrides the defaults (scales, cursor).
export function lineChart(box, { label, height, options = {} }, data) {
  const css = getComputedStyle(document.body);
  const width = () => Math.max(MIN_WIDTH, box.clientWidth);
  const plot = new uPlot(
    {
      width: width(),
      height,
      legend: { show: false },
      scales: { x: { time: true } },
      ...options,
      axes: axes(css),
      series: [{}, { label, stroke: css.getPropertyValue("--accent"), width: 2, points: { show: false } }],
    },
    data,
    box,
  );
  new ResizeObserver(() => plot.setSize({ width: width(), height })).observe(box);
  return plot;
}
