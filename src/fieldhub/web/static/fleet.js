// The fleet page (templates/fleet.html): rows follow their devices' readings and presence, new
// devices are inserted in place, the counters follow the stats frames. Each row's badge counts
// its device's open alarms (live from `alarm` frames); the open-alarm total is read from the API
// when an alarm moves and every so often (it counts devices on other pages too).

import { formatValue, nowUs, refreshTimes } from "./format.js";
import { getJSON } from "./http.js";
import { Live } from "./live.js";
import { refreshStale, setBadge } from "./presence.js";
import { toLogin } from "./session.js";

const ALARM_TOTAL_MS = 15_000;
const ALARM_TOTAL_LIMIT = 1000;

const table = document.getElementById("fleet");
const limit = Number(table.dataset.limit);
const tbody = () => table.querySelector("tbody");
const rows = () => [...tbody().querySelectorAll("tr[data-device]")];
const rowOf = (id) => tbody().querySelector(`tr[data-device="${CSS.escape(id)}"]`);

// Only the devices on this page (new ones too, and all of them again after a resync).
function subscribe() {
  live.subscribe({ devices: rows().map((r) => r.dataset.device), events: ["readings", "presence", "devices", "stats", "alarms"] });
}

function valueCell(row, metric) {
  const cell = row.querySelector(`.value[data-metric="${CSS.escape(metric)}"]`);
  if (cell) return cell;
  const chip = document.createElement("span");
  chip.className = "chip";
  chip.innerHTML = '<span class="metric"></span> <span class="value"></span>';
  chip.querySelector(".metric").textContent = metric;
  const added = chip.querySelector(".value");
  added.dataset.metric = metric;
  added.dataset.ts = "0";
  row.querySelector("td.values").append(chip);
  return added;
}

function setValue(row, metric, ts, value) {
  const cell = valueCell(row, metric);
  if (ts < Number(cell.dataset.ts)) return; // a late (backfilled) reading is not the latest
  cell.dataset.ts = String(ts);
  cell.textContent = formatValue(value);
  cell.classList.remove("flash");
  void cell.offsetWidth; // restart the highlight animation
  cell.classList.add("flash");
}

function seen(row, ts) {
  const at = Math.min(ts, nowUs());
  if (at > Number(row.dataset.lastSeen || 0)) {
    row.dataset.lastSeen = String(at);
    row.querySelector("td.seen time").dataset.us = String(at);
  }
}

function newRow(device) {
  const row = document.getElementById("fleet-row").content.firstElementChild.cloneNode(true);
  row.dataset.device = device.id;
  row.dataset.lastSeen = String(device.first_seen);
  row.dataset.staleAfter = "";
  const link = row.querySelector("td.device a");
  link.href = `/devices/${encodeURIComponent(device.id)}`;
  link.textContent = device.id;
  row.querySelector(".profile").textContent = device.profile;
  row.querySelector(".alarm-count").href = `/alarms?device=${encodeURIComponent(device.id)}`;
  row.querySelector("td.seen time").dataset.us = String(device.first_seen);
  return row;
}

function updateMatching() {
  const matching = table.dataset.filtered === "1" ? null : document.querySelector(".matching");
  if (!matching) return;
  const known = Number(document.getElementById("count-devices").textContent) || 0;
  matching.textContent = `${Math.max(rows().length, known)} devices`;
}

// A device that registered itself goes in its place by id when it sorts into this page (the
// first unfiltered page only: data-insert-new).
function insertRow(device) {
  if (table.dataset.insertNew !== "1" || rowOf(device.id)) return;
  const before = rows().find((r) => r.dataset.device > device.id);
  if (!before && rows().length >= limit) return; // sorts after this page
  const row = newRow(device);
  tbody().insertBefore(row, before || null);
  if (rows().length > limit) tbody().lastElementChild.remove();
  // The readings that came with the device's first message (sent before we could subscribe).
  for (const [metric, ts, value] of device.values || []) setValue(row, metric, ts, value);
  updateMatching();
  document.getElementById("fleet-empty")?.remove();
  refreshTimes(row);
  subscribe();
  // The stale threshold is per profile; read it once rather than guess.
  getJSON(`/api/v1/devices/${encodeURIComponent(device.id)}`)
    .then((d) => { row.dataset.staleAfter = String(d.stale_after_s); })
    .catch(() => {});
}

// After a gap: the rows again, rendered by the server (the same page with ?fragment=rows).
async function resync() {
  const url = new URL(location.href);
  url.searchParams.set("fragment", "rows");
  const r = await fetch(url);
  // A page without a session redirects to the login page: the session has ended.
  if (r.redirected) {
    toLogin();
    return;
  }
  if (!r.ok) return;
  const holder = document.createElement("table");
  holder.innerHTML = await r.text();
  tbody().replaceWith(holder.querySelector("tbody"));
  refreshTimes(table);
  subscribe();
}

function onReadings(frame) {
  for (const [device, metric, ts, value] of frame.data) {
    const row = rowOf(device);
    if (!row) continue;
    setValue(row, metric, ts, value);
    seen(row, ts);
  }
}

function onPresence(frame) {
  const row = rowOf(frame.device);
  if (!row) return;
  setBadge(row.querySelector(".badge"), frame.state);
  row.querySelector("time.since").dataset.us = String(frame.since);
  refreshTimes(row);
}

function onStats(frame) {
  const s = frame.data;
  document.getElementById("count-devices").textContent = s.fleet.devices;
  document.getElementById("count-online").textContent = s.fleet.online;
  document.getElementById("rate-messages").textContent = s.ingest.messages_per_s;
  const dl = document.getElementById("dead-letters-hour");
  dl.textContent = s.ingest.dead_letters_last_hour;
  dl.classList.toggle("warn", s.ingest.dead_letters_last_hour > 0);
}

// An alarm of a device on this page was raised, acknowledged or cleared.
function onAlarm(frame) {
  const alarm = frame.alarm;
  const row = rowOf(alarm.device);
  if (row) {
    const badge = row.querySelector(".alarm-count");
    const open = new Set(badge.dataset.open.split(" ").filter(Boolean));
    if (alarm.state === "cleared") open.delete(alarm.id);
    else open.add(alarm.id);
    badge.dataset.open = [...open].join(" ");
    badge.textContent = String(open.size);
    badge.hidden = open.size === 0;
  }
  refreshAlarmTotal();
}

async function refreshAlarmTotal() {
  try {
    const page = await getJSON(`/api/v1/alarms?state=open&limit=${ALARM_TOTAL_LIMIT}`);
    const total = document.getElementById("count-alarms");
    const more = page.next_cursor !== null;
    total.textContent = `${page.data.length}${more ? "+" : ""}`;
    total.classList.toggle("warn", page.data.length > 0);
  } catch {
    // the next tick tries again
  }
}

function tick() {
  refreshTimes(table);
  for (const row of rows()) refreshStale(row, row.querySelector(".badge"));
}

refreshTimes();
const live = new Live(
  { readings: onReadings, presence: onPresence, device: (frame) => insertRow(frame.device), stats: onStats, alarm: onAlarm },
  resync,
);
subscribe();
setInterval(tick, 1000);
setInterval(refreshAlarmTotal, ALARM_TOTAL_MS);
