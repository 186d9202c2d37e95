// The dead-letters page (templates/dead_letters.html): on its newest page (data-live="1"), new
// dead letters are listed on top as they arrive, filtered like the page.

import { refreshTimes } from "./format.js";
import { Live } from "./live.js";

const table = document.getElementById("dead-letters");
const wantedReason = table.dataset.reason;
const device = table.dataset.device;
const suppressedNote = document.getElementById("suppressed");
let suppressed = 0;

function deviceLink(id) {
  const a = document.createElement("a");
  a.href = `/dead-letters?device=${encodeURIComponent(id)}`;
  a.title = "Dead letters of this device";
  a.textContent = id;
  return a;
}

function rowFor(item) {
  const row = document.getElementById("dl-row").content.firstElementChild.cloneNode(true);
  row.querySelector("td.received time").dataset.us = String(item.received);
  row.querySelector("td.reason .tag").textContent = item.reason;
  row.querySelector("td.reason .detail").textContent = item.detail;
  row.querySelector("td.topic code").textContent = item.topic;
  if (item.device) row.querySelector("td.device").append(deviceLink(item.device));
  row.querySelector("td.payload code").textContent = item.preview;
  row.querySelector("td.payload .size").textContent = `${item.size} B`;
  row.classList.add("new");
  return row;
}

// The server sends at most 20 items a frame and counts the rest (docs/live.md): say how many.
function noteSuppressed(n) {
  if (!n) return;
  suppressed += n;
  suppressedNote.hidden = false;
  suppressedNote.textContent = `${suppressed} more arrived too fast to list live; reload to see them`;
}

function onDeadLetters(frame) {
  if (table.dataset.live !== "1") return;
  const tbody = table.querySelector("tbody");
  for (const item of frame.items) {
    if (wantedReason && item.reason !== wantedReason) continue;
    const row = rowFor(item);
    tbody.prepend(row);
    refreshTimes(row);
  }
  document.getElementById("dl-empty")?.remove();
  noteSuppressed(frame.suppressed);
}

refreshTimes();
const live = new Live({ dead_letters: onDeadLetters }, null);
live.subscribe({ devices: device ? [device] : null, events: ["dead_letters"] });
setInterval(() => refreshTimes(table), 1000);
