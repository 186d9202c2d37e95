// Alarm rows (templates/alarm_row.html), shared by the alarms page and the device page: fill a
// row from an alarm as the API and the live `alarm` frame show it (docs/live.md), keep rows in
// the page's order (active, then acknowledged, then cleared; newest first within each), and
// acknowledge or clear from a row's buttons (operators; the API refuses anyone else).

import { refreshTimes, usOf } from "./format.js";
import { send } from "./http.js";

const ORDER = { active: 0, acknowledged: 1, cleared: 2 };

// Whether row `a` sorts before an alarm in `state` raised at `raisedUs` with id `id`.
function before(a, state, raisedUs, id) {
  const sa = ORDER[a.dataset.state] ?? 3;
  const sb = ORDER[state] ?? 3;
  if (sa !== sb) return sa < sb;
  const ra = Number(a.dataset.raised);
  if (ra !== raisedUs) return ra > raisedUs;
  return a.dataset.alarm < id;
}

function setTime(span, iso) {
  const t = span.querySelector("time");
  span.hidden = !iso;
  t.dataset.us = iso ? String(usOf(iso)) : "";
  if (!iso) t.textContent = "";
}

// Fill `row` from `alarm` (the REST/live body: times ISO 8601).
export function fill(row, alarm) {
  row.dataset.alarm = alarm.id;
  row.dataset.state = alarm.state;
  row.dataset.raised = String(usOf(alarm.raised));
  row.dataset.device = alarm.device;
  row.dataset.rule = alarm.rule;
  const sev = row.querySelector(".severity-tag");
  sev.dataset.severity = alarm.severity;
  sev.textContent = alarm.severity;
  const badge = row.querySelector(".alarm-state");
  badge.dataset.state = alarm.state;
  badge.textContent = alarm.state;
  const rule = row.querySelector("td.rule a");
  rule.href = `/alarms?rule=${encodeURIComponent(alarm.rule)}`;
  rule.textContent = alarm.rule;
  const device = row.querySelector("td.device a");
  if (device) {
    device.href = `/devices/${encodeURIComponent(alarm.device)}`;
    device.textContent = alarm.device;
  }
  setTime(row.querySelector(".raised"), alarm.raised);
  setTime(row.querySelector(".acked"), alarm.acknowledged);
  setTime(row.querySelector(".cleared"), alarm.cleared);
  row.querySelector(".acked-by").textContent = alarm.acknowledged_by || "";
  row.querySelector(".ack-comment").textContent = alarm.ack_comment || "";
  const clearedBy = row.querySelector(".cleared-by");
  clearedBy.hidden = !alarm.cleared_by;
  clearedBy.querySelector(".name").textContent = alarm.cleared_by || "";
  const actions = row.querySelector("td.actions");
  if (actions) {
    actions.querySelector(".ack").hidden = alarm.state !== "active";
    actions.querySelector(".clear").hidden = alarm.state === "cleared";
    actions.querySelector(".comment").hidden = alarm.state === "cleared";
  }
  refreshTimes(row);
}

// Rows of one table body, kept in order as alarms arrive. `template` is the empty row; `keep`
// says whether an alarm belongs in the table (the page's filters); `onChange` runs after each put.
export class AlarmRows {
  constructor(tbody, template, { keep = () => true, onChange = () => {} } = {}) {
    this.tbody = tbody;
    this.template = template;
    this.keep = keep;
    this.onChange = onChange;
    tbody.addEventListener("click", (e) => this.click(e));
  }

  rows() {
    return [...this.tbody.querySelectorAll("tr[data-alarm]")];
  }

  rowOf(id) {
    return this.tbody.querySelector(`tr[data-alarm="${CSS.escape(id)}"]`);
  }

  // Insert or update the alarm's row and move it to its place, or remove it when the table does
  // not keep it.
  put(alarm) {
    let row = this.rowOf(alarm.id);
    // A move never goes back (active -> acknowledged -> cleared): a frame that arrives after
    // the API's own answer to this page's click says nothing new.
    if (row && (ORDER[row.dataset.state] ?? 0) > (ORDER[alarm.state] ?? 0)) return;
    if (!this.keep(alarm)) {
      row?.remove();
      this.onChange();
      return;
    }
    if (!row) row = this.template.content.firstElementChild.cloneNode(true);
    fill(row, alarm);
    const raised = usOf(alarm.raised);
    const next = this.rows().find((r) => r !== row && !before(r, alarm.state, raised, alarm.id));
    if (row.nextElementSibling !== next || row.parentNode !== this.tbody) this.tbody.insertBefore(row, next || null);
    this.onChange();
  }

  async click(e) {
    const button = e.target.closest("button.ack, button.clear");
    if (!button) return;
    const row = button.closest("tr[data-alarm]");
    const error = row.querySelector(".move-error");
    const comment = row.querySelector("input.comment").value.trim();
    const move = button.classList.contains("ack") ? "acknowledge" : "clear";
    error.hidden = true;
    button.disabled = true;
    try {
      const r = await send(`/api/v1/alarms/${encodeURIComponent(row.dataset.alarm)}/${move}`, "POST", comment ? { comment } : {});
      const body = await r.json().catch(() => ({}));
      if (r.ok) {
        row.querySelector("input.comment").value = "";
        this.put(body);
      } else {
        error.textContent = body?.error?.message || `HTTP ${r.status}`;
        error.hidden = false;
      }
    } catch (err) {
      error.textContent = String(err);
      error.hidden = false;
    } finally {
      button.disabled = false;
    }
  }
}
