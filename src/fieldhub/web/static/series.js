// The device page's chart data: history from the API, then live points folded in.
//
// A series is {x: [us], y: [], n: []} (n: readings behind each point). A view is
// {range, startUs, endUs, intervalUs}: endUs null follows now; intervalUs 0 draws raw readings.

import { US, nowUs, usOf } from "./format.js";
import { getJSON } from "./http.js";

export const RANGES = { "1h": 3600, "24h": 86400, "7d": 7 * 86400 };
// Ranges up to this long draw raw readings (what was streamed is exactly what a reload draws);
// longer ones draw averages over ~TARGET_POINTS buckets of a NICE_S size from the series endpoint.
const RAW_MAX_S = 2 * 3600;
const TARGET_POINTS = 720;
const NICE_S = [1, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400];
const RAW_PAGE = 10000;
const MAX_RAW_PAGES = 20;

function intervalFor(spanS) {
  const want = spanS / TARGET_POINTS;
  return NICE_S.find((s) => s >= want) || 86400;
}

// Set the view's window (a preset range ends now) and the bucket size its span calls for.
export function fitView(view) {
  const now = nowUs();
  if (view.range !== "custom") {
    view.endUs = null;
    view.startUs = now - RANGES[view.range] * US;
  }
  const spanS = ((view.endUs ?? now) - view.startUs) / US;
  view.intervalUs = spanS <= RAW_MAX_S ? 0 : intervalFor(spanS) * US;
}

// Raw readings of every metric in [startUs, endUs): {byMetric: {metric: {x, y}}, complete}.
export async function loadRaw(enc, startUs, endUs) {
  // No prototype: a device may name a metric anything, `constructor` and `__proto__` included.
  const byMetric = Object.create(null);
  let cursor = null;
  for (let i = 0; i < MAX_RAW_PAGES; i++) {
    const q = new URLSearchParams({ start: String(startUs), limit: String(RAW_PAGE) });
    if (endUs) q.set("end", String(endUs));
    if (cursor) q.set("cursor", cursor);
    const page = await getJSON(`/api/v1/devices/${enc}/readings?${q}`);
    for (const r of page.data) {
      (byMetric[r.metric] ||= { x: [], y: [] });
      byMetric[r.metric].x.push(usOf(r.ts));
      byMetric[r.metric].y.push(r.value);
    }
    cursor = page.next_cursor;
    if (!cursor) return { byMetric, complete: true };
  }
  return { byMetric, complete: false };
}

// One metric's averages over buckets of `intervalS`: a series.
export async function loadSeries(enc, metric, startUs, endUs, intervalS) {
  const q = new URLSearchParams({ metric, start: String(startUs), interval: `${intervalS}s`, agg: "avg" });
  if (endUs) q.set("end", String(endUs));
  const s = await getJSON(`/api/v1/devices/${enc}/series?${q}`);
  return { x: s.points.map((p) => usOf(p.ts)), y: s.points.map((p) => p.value), n: s.points.map((p) => p.count) };
}

// True when a reading at `ts` falls inside the view.
export function inView(view, ts) {
  return !(view.endUs !== null && ts >= view.endUs) && ts >= view.startUs;
}

// A live reading goes into the series in time order (a backfilled one may be older), folded
// into its bucket's running mean when the view shows averages.
export function addPoint(c, view, ts, value) {
  const key = view.intervalUs ? Math.floor(ts / view.intervalUs) * view.intervalUs : ts;
  let i = c.x.length;
  while (i > 0 && c.x[i - 1] > key) i--;
  if (i > 0 && c.x[i - 1] === key) {
    if (view.intervalUs) {
      const n = c.n[i - 1];
      c.y[i - 1] = (c.y[i - 1] * n + value) / (n + 1);
      c.n[i - 1] = n + 1;
    } else {
      c.y[i - 1] = value;
    }
  } else {
    c.x.splice(i, 0, key);
    c.y.splice(i, 0, value);
    c.n.splice(i, 0, 1);
  }
}

// A preset range that follows now moves its start up to now - range and drops what fell out. A
// custom range keeps its start, whether or not its end follows now.
export function slide(c, view, now) {
  if (view.endUs !== null || !(view.range in RANGES)) return;
  view.startUs = now - RANGES[view.range] * US;
  while (c.x.length && c.x[0] < view.startUs - view.intervalUs) { c.x.shift(); c.y.shift(); c.n.shift(); }
}
