// The device page (templates/device.html): charts drawn from the API's history, then grown by
// live readings; presence badge and timeline; attributes; the command panel (commands.js); the
// device's open alarms (alarm_rows.js), live from `alarm` frames; the window loop's decisions
// for a device it decides for (window_decisions.js).

import { AlarmRows } from "./alarm_rows.js";
import { CommandPanel } from "./commands.js";
import { MetricCharts } from "./device_charts.js";
import { US, nowUs, refreshTimes } from "./format.js";
import { getJSON } from "./http.js";
import { Live } from "./live.js";
import { refreshStale, setBadge } from "./presence.js";
import { addPoint, fitView, inView, loadRaw, loadSeries, slide } from "./series.js";
import { Timeline } from "./timeline.js";
import { WindowDecisions } from "./window_decisions.js";

const head = document.getElementById("device");
const deviceId = head.dataset.device;
const enc = encodeURIComponent(deviceId);
const note = document.getElementById("range-note");
const rangeForm = document.getElementById("ranges");
const presenceBadge = document.getElementById("presence");
const charts = new MetricCharts(document.getElementById("charts"));
const timeline = new Timeline(
  document.getElementById("timeline"),
  document.getElementById("timeline-start"),
  document.getElementById("timeline-end"),
);
const alarmsEmpty = document.getElementById("alarms-empty");
const alarms = new AlarmRows(
  document.querySelector("#alarms tbody"),
  document.getElementById("alarm-row"),
  {
    keep: (alarm) => alarm.device === deviceId && alarm.state !== "cleared",
    onChange: () => { alarmsEmpty.hidden = alarms.rows().length > 0; },
  },
);
// For tests: what each chart draws, and whether the history for the current view is drawn.
window.fieldhub = { charts: {}, ready: false };
let view = { range: "1h", startUs: 0, endUs: null, intervalUs: 0 }; // endUs null = follows now

// Live readings that arrive while history loads are held and applied after it, so one
// committed just after the history query is neither lost nor drawn twice.
let loading = null;

async function load() {
  const held = [];
  loading = held;
  try {
    await loadHistory();
  } finally {
    loading = null;
  }
  if (held.length) applyReadings(held);
}

async function loadRawHistory() {
  const { byMetric, complete } = await loadRaw(enc, view.startUs, view.endUs);
  for (const m of new Set([...charts.rendered(), ...Object.keys(byMetric)])) {
    const c = charts.series(m);
    c.x = byMetric[m]?.x || [];
    c.y = byMetric[m]?.y || [];
    c.n = c.x.map(() => 1);
  }
  note.textContent = complete ? "raw readings" : "raw readings (first 200,000 only; narrow the range)";
}

async function loadAverages() {
  await Promise.all(charts.rendered().map(async (m) => {
    const s = await loadSeries(enc, m, view.startUs, view.endUs, view.intervalUs / US);
    Object.assign(charts.series(m), s);
  }));
  note.textContent = `averages over ${view.intervalUs / US} s`;
}

async function loadHistory() {
  window.fieldhub.ready = false;
  fitView(view);
  if (view.intervalUs === 0) await loadRawHistory();
  else await loadAverages();
  for (const m of charts.metrics()) charts.draw(m);
  charts.expose();
  await timeline.load(enc, view);
  window.fieldhub.ready = true;
}

function addLivePoint(metric, ts, value) {
  const now = nowUs();
  if (!inView(view, ts)) return;
  const c = charts.series(metric);
  addPoint(c, view, ts, value);
  slide(c, view, now);
}

function markSeen(ts) {
  const seen = Math.min(ts, nowUs());
  if (seen > Number(head.dataset.lastSeen)) {
    head.dataset.lastSeen = String(seen);
    document.getElementById("last-seen").dataset.us = String(seen);
  }
}

function applyReadings(readings) {
  const touched = new Set();
  for (const [, metric, ts, value] of readings) {
    addLivePoint(metric, ts, value);
    charts.showLatest(metric, ts, value);
    touched.add(metric);
    markSeen(ts);
  }
  for (const m of touched) charts.draw(m);
  if (touched.size) charts.expose();
}

// An attributes frame is a merge patch: null removes a key; rows stay sorted by key.
function setAttributes(patch) {
  const tbody = document.querySelector("#attributes tbody");
  for (const [key, value] of Object.entries(patch)) {
    let row = tbody.querySelector(`tr[data-key="${CSS.escape(key)}"]`);
    if (value === null) { row?.remove(); continue; }
    if (!row) {
      row = document.createElement("tr");
      row.dataset.key = key;
      row.innerHTML = "<th></th><td></td>";
      row.querySelector("th").textContent = key;
      const rows = [...tbody.children];
      tbody.insertBefore(row, rows.find((r) => r.dataset.key > key) || null);
    }
    row.querySelector("td").textContent = String(value);
  }
  document.getElementById("no-attributes")?.remove();
}

function onReadings(frame) {
  const mine = frame.data.filter((r) => r[0] === deviceId);
  if (loading) loading.push(...mine);
  else applyReadings(mine);
}

function onPresence(frame) {
  if (frame.device !== deviceId) return;
  setBadge(presenceBadge, frame.state);
  timeline.add(frame.since, frame.state);
  timeline.draw(view);
}

// The view a range button asks for; null (with a note) when the custom range is not a range.
function viewFor(range) {
  if (range !== "custom") return { range, startUs: 0, endUs: null, intervalUs: 0 };
  const start = Date.parse(rangeForm.start.value);
  const end = rangeForm.end.value ? Date.parse(rangeForm.end.value) : Date.now();
  if (!Number.isFinite(start) || !(start < end)) {
    note.textContent = "choose a start before the end";
    return null;
  }
  return { range, startUs: start * 1000, endUs: rangeForm.end.value ? end * 1000 : null, intervalUs: 0 };
}

function onRangeClick(e) {
  const button = e.target.closest("button[data-range]");
  if (!button) return;
  const next = viewFor(button.dataset.range);
  if (!next) return;
  view = next;
  for (const b of rangeForm.querySelectorAll("button[data-range]")) b.setAttribute("aria-pressed", String(b === button));
  load().catch((err) => { note.textContent = String(err); });
}

// Only open alarms are listed here: a cleared one leaves (the alarms page keeps the history).
function onAlarm(alarm) {
  if (alarm.device === deviceId) alarms.put(alarm);
}

async function resyncAlarms() {
  const open = await getJSON(`/api/v1/alarms?state=open&device=${enc}&limit=500`);
  const ids = new Set(open.data.map((a) => a.id));
  for (const row of alarms.rows()) if (!ids.has(row.dataset.alarm)) row.remove();
  for (const alarm of open.data) onAlarm(alarm);
  alarmsEmpty.hidden = alarms.rows().length > 0;
}

function tick() {
  refreshTimes();
  refreshStale(head, presenceBadge);
  timeline.draw(view);
}

refreshTimes();
const commands = new CommandPanel(deviceId);
const live = new Live(
  {
    readings: onReadings,
    presence: onPresence,
    attributes(frame) { if (frame.device === deviceId) setAttributes(frame.attributes); },
    command(frame) { commands.frame(frame); },
    alarm(frame) { onAlarm(frame.alarm); },
  },
  () => {
    commands.resync();
    resyncAlarms().catch(() => {});
    return load();
  },
);
live.subscribe({ devices: [deviceId], events: ["readings", "presence", "devices", "commands", "alarms"] });
commands.start();
const windowSection = document.getElementById("window-decisions");
if (windowSection) new WindowDecisions(windowSection, deviceId).start();
rangeForm.addEventListener("click", onRangeClick);
setInterval(tick, 1000);
await load();
