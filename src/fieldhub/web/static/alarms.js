// The alarms page (templates/alarms.html): rendered whole by the server, then kept live from
// `alarm` frames (the `alarms` event kind): a raised alarm appears in its place, an acknowledged
// or cleared one changes state and moves. Operators acknowledge and clear from a row (with an
// optional comment) through the API; a viewer's page has no such controls.

import { AlarmRows } from "./alarm_rows.js";
import { refreshTimes } from "./format.js";
import { getJSON } from "./http.js";
import { Live } from "./live.js";

const TICK_MS = 30_000;
const CLEARED_ROWS = 50;

const table = document.getElementById("alarms");
const filters = { state: table.dataset.state, device: table.dataset.device, rule: table.dataset.rule };
const empty = document.getElementById("alarms-empty");
const rows = new AlarmRows(table.querySelector("tbody"), document.getElementById("alarm-row"), {
  keep: matches,
  onChange: () => { empty.hidden = rows.rows().length > 0; },
});

// Whether an alarm belongs on this page with its filters.
function matches(alarm) {
  if (filters.device && alarm.device !== filters.device) return false;
  if (filters.rule && alarm.rule !== filters.rule) return false;
  if (filters.state === "open") return alarm.state !== "cleared";
  return !filters.state || alarm.state === filters.state;
}

function query(state, limit) {
  const q = new URLSearchParams({ state, limit: String(limit) });
  if (filters.device) q.set("device", filters.device);
  if (filters.rule) q.set("rule", filters.rule);
  return `/api/v1/alarms?${q}`;
}

// After a gap: what changed while the socket was away, from the API.
async function resync() {
  const states = filters.state ? [filters.state] : ["open", "cleared"];
  for (const state of states) {
    const page = await getJSON(query(state, state === "cleared" ? CLEARED_ROWS : 500));
    for (const alarm of page.data) rows.put(alarm);
  }
}

const live = new Live({ alarm: (frame) => rows.put(frame.alarm) }, resync);
live.subscribe({ devices: filters.device ? [filters.device] : null, events: ["alarms"] });
refreshTimes(table);
setInterval(() => refreshTimes(table), TICK_MS);
