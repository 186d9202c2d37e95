// The device page's command panel (docs/commands.md): the forms (command_form.js) and the log of
// recent commands, whose rows follow each command's state live and offer Cancel while pending.

import { errorMessage, note, renderCommandForms } from "./command_form.js";
import { nowUs, refreshTimes, usOf } from "./format.js";
import { getJSON, send } from "./http.js";
import { allows } from "./session.js";

const COMMAND_ROWS = 20;

// A command only moves forward (pending -> sent -> one final state). What the page learns may
// arrive out of that order (the POST's answer after the command's own live frames, a list read
// just before a transition), so a row never goes back to an earlier state. The states come from
// GET /api/v1/command-states in lifecycle order: each state that is not final ranks by its place
// in that order, every final state after all of them.
export function commandRanks(body) {
  const open = body.states.filter((s) => !s.final).map((s) => s.name);
  const ranks = new Map(open.map((name, i) => [name, i]));
  for (const s of body.states) if (s.final) ranks.set(s.name, open.length);
  // A state the table lacks: after the first one, before the final ones.
  return (state) => ranks.get(state) ?? Math.min(1, open.length);
}

export class CommandPanel {
  constructor(deviceId) {
    this.deviceId = deviceId;
    this.enc = encodeURIComponent(deviceId);
    this.typesEl = document.getElementById("command-types");
    this.tbody = document.querySelector("#command-log tbody");
    this.empty = document.getElementById("no-commands");
    this.cancelError = document.getElementById("command-log-error");
    // Until the states are read, nothing can be ordered: what arrives waits here.
    this.rankOf = null;
    this.waiting = [];
    this.tbody.addEventListener("click", (e) => this.clicked(e));
    this.empty.hidden = true;
  }

  start() {
    this.loadTypes();
    this.loadLog();
  }

  resync() {
    return this.loadLog();
  }

  // A live `command` frame of this device.
  frame(frame) {
    const cmd = frame.command;
    if (!cmd || (cmd.device && cmd.device !== this.deviceId)) return;
    this.upsert(cmd, cmd.transition);
  }

  // The state table, read once (again after a failure, at the next resync).
  async loadRanks() {
    if (this.rankOf) return;
    this.rankOf = commandRanks(await getJSON("/api/v1/command-states"));
    const waiting = this.waiting;
    this.waiting = [];
    for (const [cmd, transition] of waiting) this.upsert(cmd, transition);
  }

  async loadTypes() {
    // A viewer may read the log but not send: no forms at all rather than buttons that answer
    // 403 (the API refuses them regardless).
    if (!allows("operator")) {
      this.typesEl.replaceChildren(note(
        "Sending and cancelling commands needs the operator role; you are signed in as a viewer.",
        "commands-not-allowed",
      ));
      return;
    }
    try {
      const body = await getJSON(`/api/v1/devices/${this.enc}/command-types`);
      renderCommandForms(this.typesEl, this.enc, body, (cmd) => this.upsert(cmd));
    } catch (err) {
      this.typesEl.replaceChildren(note(`Could not read the commands of this device: ${err.message}`));
    }
  }

  async loadLog() {
    try {
      await this.loadRanks();
      const body = await getJSON(`/api/v1/devices/${this.enc}/commands?limit=${COMMAND_ROWS}`);
      for (const cmd of [...body.data].reverse()) this.upsert(cmd);
      this.empty.textContent = "No commands sent to this device yet.";
    } catch (err) {
      this.empty.textContent = `Could not read the commands of this device: ${err.message}`;
    }
    this.empty.hidden = this.tbody.children.length > 0;
  }

  rowOf(id) {
    return this.tbody.querySelector(`tr[data-command-id="${CSS.escape(id)}"]`);
  }

  // Insert the command or bring its row up to date; rows stay newest first (by `created`).
  upsert(cmd, transition) {
    if (!this.rankOf) {
      this.waiting.push([cmd, transition]);
      return;
    }
    const row = this.rowOf(cmd.id);
    if (!row) {
      this.insert(cmd, transition);
    } else if (this.rankOf(cmd.state) >= this.rankOf(row.querySelector("td.state").dataset.state)) {
      fillRow(row, cmd, transition);
    }
  }

  insert(cmd, transition) {
    const row = document.getElementById("command-row").content.firstElementChild.cloneNode(true);
    row.dataset.commandId = cmd.id;
    const created = cmd.created ? usOf(cmd.created) : nowUs();
    row.dataset.created = String(created);
    row.querySelector("td.created time").dataset.us = String(created);
    row.querySelector("td.name code").textContent = cmd.name;
    const params = cmd.params && Object.keys(cmd.params).length ? JSON.stringify(cmd.params) : "";
    row.querySelector("td.params code").textContent = params;
    fillRow(row, cmd, transition);
    const before = [...this.tbody.children].find((r) => Number(r.dataset.created) < created);
    row.classList.add("new");
    refreshTimes(row);
    this.tbody.insertBefore(row, before || null);
    while (this.tbody.children.length > COMMAND_ROWS) this.tbody.lastElementChild.remove();
    this.empty.hidden = true;
  }

  clicked(e) {
    const button = e.target.closest("button.cancel");
    const row = button?.closest("tr[data-command-id]");
    if (row && !button.disabled) this.cancel(row, button);
  }

  showCancelError(message) {
    this.cancelError.textContent = message;
    this.cancelError.hidden = !message;
  }

  // DELETE answers 200 with the command, now cancelled, or 409 once it was handed to the broker
  // or is final (docs/commands.md): then the API's message is shown and the row re-read.
  async cancel(row, button) {
    const id = row.dataset.commandId;
    const name = row.querySelector("td.name code").textContent;
    const url = `/api/v1/devices/${this.enc}/commands/${encodeURIComponent(id)}`;
    this.showCancelError("");
    button.disabled = true;
    row.setAttribute("aria-busy", "true");
    try {
      const r = await send(url, "DELETE");
      let body = null;
      try { body = await r.json(); } catch { /* not JSON: reported by status below */ }
      if (r.ok && body?.id) {
        this.upsert(body); // never backwards: a live frame that came first stays
        return;
      }
      this.showCancelError(`Could not cancel ${name}: ${errorMessage(r, body)}`);
      if (r.status === 409) {
        // The command moved on; its live frame may not have arrived yet (or the socket is down).
        getJSON(url).then((cmd) => this.upsert(cmd), () => {});
      }
    } catch (err) {
      this.showCancelError(`Could not cancel ${name}: ${err.message || err}`);
    } finally {
      button.disabled = false;
      row.removeAttribute("aria-busy");
    }
  }
}

function fillRow(row, cmd, transition) {
  const cell = row.querySelector("td.state");
  if (cell.dataset.state !== cmd.state) cell.dataset.state = cmd.state;
  cell.querySelector(".badge").textContent = cmd.state;
  const last = transition || cmd.history?.[cmd.history.length - 1];
  cell.title = last ? `${last.state} at ${last.at}${last.detail ? `: ${last.detail}` : ""}` : "";
  const outcome = row.querySelector("td.outcome");
  outcome.querySelector(".decided-by").textContent = cmd.decided_by || "";
  outcome.querySelector(".error").textContent = cmd.error || "";
  const result = outcome.querySelector(".result");
  result.textContent = cmd.result == null ? "" : `result ${JSON.stringify(cmd.result)}`;
  syncCancel(row, cmd);
}

// A pending command can still be cancelled (by an operator or admin): its row offers a button
// until it leaves pending, whichever says so first (the DELETE's answer, a live frame, a resync).
function syncCancel(row, cmd) {
  const cell = row.querySelector("td.actions");
  const button = cell.querySelector("button.cancel");
  if (cmd.state !== "pending" || !allows("operator")) {
    button?.remove();
    return;
  }
  if (button) return;
  const b = document.createElement("button");
  b.type = "button";
  b.className = "cancel";
  b.textContent = "Cancel";
  b.title = `Cancel ${cmd.name} before it is sent`;
  cell.append(b);
}
