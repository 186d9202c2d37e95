// The window loop's decisions as the dashboard lists them (docs/ml.md), shared by the ML page
// (ml.js) and the device page's "Window decisions" section (WindowDecisions below): each row a
// decision's time, outcome, reason, model position, confidence, the position sent and the
// first guard that said no. Operators ask for a decision now; admins set the device's guards.

import { formatValue, refreshTimes, usOf } from "./format.js";
import { getJSON, send } from "./http.js";
import { allows } from "./session.js";

// The device page's rows, and how often they are re-read (the loop decides at most every
// interval_s, 60 s by default; nothing pushes decisions over the live socket).
const DEVICE_ROWS = 10;
const DEVICE_REFRESH_MS = 10_000;
// The guards an admin sets from the device page; the rest of the configuration is kept as is.
const GUARD_FIELDS = ["shadow", "enabled", "min_confidence", "max_step", "deadband", "min_interval_s"];

// "guard: detail" of the first verdict that was not ok; "" when every guard let it through.
export function firstFailing(decision) {
  const v = (decision.verdicts || []).find((verdict) => !verdict.ok);
  if (!v) return "";
  return v.detail ? `${v.guard}: ${v.detail}` : v.guard;
}

function text(value) {
  return value === null || value === undefined ? "–" : formatValue(value);
}

function cell(tr, name, label, content) {
  const td = document.createElement("td");
  td.className = name;
  td.dataset.label = label;
  if (content instanceof Node) td.append(content);
  else td.textContent = content;
  tr.append(td);
  return td;
}

function timeOf(iso) {
  const t = document.createElement("time");
  t.dataset.us = String(usOf(iso));
  t.textContent = iso;
  return t;
}

function deviceLink(id) {
  const a = document.createElement("a");
  a.href = `/devices/${encodeURIComponent(id)}`;
  a.textContent = id;
  return a;
}

// One table row of `decision` with `columns` in that order, among time, device, trigger,
// reason, outcome, position, confidence, target, guard.
export function decisionRow(decision, columns) {
  const tr = document.createElement("tr");
  tr.dataset.decision = decision.id;
  tr.dataset.device = decision.device_id;
  tr.dataset.outcome = decision.outcome;
  for (const column of columns) {
    const [name, label, content] = COLUMNS[column](decision);
    cell(tr, name, label, content);
  }
  return tr;
}

function outcomeTag(outcome) {
  const tag = document.createElement("span");
  tag.className = "tag outcome-tag";
  tag.dataset.outcome = outcome;
  tag.textContent = outcome;
  return tag;
}

// Each column: [class, label, content] of a decision.
const COLUMNS = {
  time: (d) => ["at", "Time", timeOf(d.at)],
  device: (d) => ["device", "Device", deviceLink(d.device_id)],
  trigger: (d) => ["trigger", "Trigger", d.trigger],
  reason: (d) => ["reason", "Reason", d.reason],
  outcome: (d) => ["outcome", "Outcome", outcomeTag(d.outcome)],
  position: (d) => ["position", "Position", text(d.position)],
  confidence: (d) => ["confidence", "Confidence", text(d.confidence)],
  target: (d) => ["target", "Target", text(d.target_position)],
  guard: (d) => ["guard", "First failing guard", firstFailing(d)],
};

// The API's error message of a refused request.
export async function errorOf(response) {
  const body = await response.json().catch(() => ({}));
  return body?.error?.message || `HTTP ${response.status}`;
}

// The device page's section (templates/device.html #window-decisions): the device's latest
// decisions, re-read every few seconds; "Decide now" (operators); the guards form (admins).
export class WindowDecisions {
  constructor(section, deviceId) {
    this.section = section;
    this.enc = encodeURIComponent(deviceId);
    this.tbody = section.querySelector("#window-decisions-table tbody");
    this.empty = section.querySelector("#window-decisions-empty");
    this.error = section.querySelector("#window-error");
    this.form = section.querySelector("#window-guards");
    this.config = null;
  }

  start() {
    const decide = this.section.querySelector("#decide-now");
    if (decide && allows("operator")) decide.addEventListener("click", () => this.decide(decide));
    else decide?.remove();
    if (this.form && allows("admin")) {
      this.form.addEventListener("submit", (e) => { e.preventDefault(); this.saveGuards(); });
      this.loadConfig().catch((err) => this.showError(String(err)));
    } else {
      this.form?.remove();
    }
    this.load().catch((err) => this.showError(String(err)));
    setInterval(() => this.load().catch(() => {}), DEVICE_REFRESH_MS);
  }

  showError(message) {
    this.error.textContent = message;
    this.error.hidden = !message;
  }

  async load() {
    const page = await getJSON(`/api/v1/ml/decisions?device=${this.enc}&limit=${DEVICE_ROWS}`);
    this.show(page.data);
  }

  show(decisions) {
    const columns = ["time", "outcome", "reason", "target", "confidence", "guard"];
    this.tbody.replaceChildren(...decisions.map((d) => decisionRow(d, columns)));
    this.empty.hidden = decisions.length > 0;
    refreshTimes(this.tbody);
  }

  async decide(button) {
    button.disabled = true;
    try {
      const r = await send(`/api/v1/ml/devices/${this.enc}/decide`, "POST");
      if (!r.ok) { this.showError(await errorOf(r)); return; }
      this.showError("");
      await this.load();
    } catch (err) {
      this.showError(String(err));
    } finally {
      button.disabled = false;
    }
  }

  async loadConfig() {
    const answer = await getJSON(`/api/v1/ml/devices/${this.enc}`);
    this.config = answer.config;
    for (const name of GUARD_FIELDS) {
      const input = this.form.elements[name];
      const value = answer.config.guards[name];
      if (input.type === "checkbox") input.checked = Boolean(value);
      else input.value = String(value);
    }
  }

  async saveGuards() {
    if (!this.config) return;
    const guards = { ...this.config.guards };
    for (const name of GUARD_FIELDS) {
      const input = this.form.elements[name];
      guards[name] = input.type === "checkbox" ? input.checked : Number(input.value);
    }
    const r = await send(`/api/v1/ml/devices/${this.enc}`, "PUT", { guards, trigger: this.config.trigger });
    if (!r.ok) { this.showError(await errorOf(r)); return; }
    this.config = (await r.json()).config;
    this.showError("");
    this.form.querySelector(".saved").hidden = false;
  }
}
