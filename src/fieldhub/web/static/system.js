// The system page (templates/system.html): every [data-stat] figure and the messages/s chart
// follow the stats frame sent once a second (the body of GET /api/v1/system).

import { lineChart } from "./charts.js";
import { US, refreshTimes } from "./format.js";
import { Live } from "./live.js";

const WINDOW_S = 300; // five minutes of one sample a second
const xs = [];
const ys = [];
const plot = lineChart(
  document.getElementById("rate-chart"),
  {
    label: "messages/s",
    height: 180,
    // A fixed five-minute window, so the first samples do not stretch across the whole width.
    options: { scales: { x: { time: true, range: (u, min, max) => [max - WINDOW_S, max] } } },
  },
  [xs, ys],
);

// `path` like "ingest.queue_depth" in the snapshot; undefined or null when absent.
function statOf(snapshot, path) {
  return path.split(".").reduce((o, k) => (o == null ? o : o[k]), snapshot);
}

// A figure; data-bool="yes,no" shows a boolean as one of two words (and data-state ok/bad).
function showStat(el, value) {
  if (el.dataset.bool) {
    const [yes, no] = el.dataset.bool.split(",");
    el.textContent = value == null ? "—" : value ? yes : no;
    el.dataset.state = value == null ? "" : value ? "ok" : "bad";
  } else {
    el.textContent = value == null ? "—" : String(value);
  }
}

function onStats(frame) {
  const s = frame.data;
  for (const el of document.querySelectorAll("[data-stat]")) showStat(el, statOf(s, el.dataset.stat));
  xs.push(s.time_us / US);
  ys.push(s.ingest.messages_per_s);
  while (xs.length > WINDOW_S) { xs.shift(); ys.shift(); }
  plot.setData([xs, ys]);
}

refreshTimes();
const live = new Live({ stats: onStats }, null);
live.subscribe({ devices: [], events: ["stats"] });
