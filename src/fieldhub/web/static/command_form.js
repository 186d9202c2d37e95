// The device page's command forms: one per command the device accepts, built from its params
// schema (GET /api/v1/devices/{id}/command-types). A form POSTs the command and hands the API's
// answer to `onAccepted`; a refusal shows the API's own message under the form.

import { send } from "./http.js";

// One input per property of the command's params schema. Bounds go on the inputs as hints,
// but the form does not validate: the API checks the params and its message says what is wrong.
function inputFor(schema, type, required) {
  let input;
  if (Array.isArray(schema.enum)) {
    input = document.createElement("select");
    input.dataset.kind = "enum";
    if (!required) input.append(new Option("—", ""));
    for (const v of schema.enum) input.append(new Option(String(v), JSON.stringify(v)));
    if (schema.default !== undefined) input.value = JSON.stringify(schema.default);
  } else if (type === "boolean") {
    input = document.createElement("input");
    input.type = "checkbox";
    input.dataset.kind = "boolean";
    input.checked = schema.default === true;
  } else if (type === "integer" || type === "number") {
    input = numberInput(schema, type);
  } else {
    input = document.createElement("input");
    input.type = "text";
    // A string as typed; anything else (objects, arrays, untyped) is read as JSON.
    input.dataset.kind = type === "string" ? "string" : "json";
    if (input.dataset.kind === "json") input.placeholder = "JSON";
    if (typeof schema.maxLength === "number") input.maxLength = schema.maxLength;
    if (schema.default !== undefined) input.value = type === "string" ? String(schema.default) : JSON.stringify(schema.default);
  }
  return input;
}

function numberInput(schema, type) {
  const input = document.createElement("input");
  input.type = "number";
  input.dataset.kind = type;
  input.step = type === "integer" ? "1" : "any";
  const lo = schema.minimum ?? schema.exclusiveMinimum;
  const hi = schema.maximum ?? schema.exclusiveMaximum;
  if (typeof schema.minimum === "number") input.min = String(schema.minimum);
  if (typeof schema.maximum === "number") input.max = String(schema.maximum);
  if (typeof lo === "number" || typeof hi === "number") input.placeholder = `${lo ?? ""}–${hi ?? ""}`;
  if (typeof schema.default === "number") input.value = String(schema.default);
  return input;
}

function fieldFor(name, schema, required) {
  const label = document.createElement("label");
  label.className = "param";
  const caption = document.createElement("span");
  caption.textContent = name;
  const type = Array.isArray(schema.type) ? schema.type.find((t) => t !== "null") : schema.type;
  const input = inputFor(schema, type, required);
  input.name = name;
  input.dataset.param = name;
  if (required) input.setAttribute("aria-required", "true");
  if (schema.description) input.title = schema.description;
  if (input.type === "checkbox") {
    label.classList.add("check");
    label.append(input, caption);
  } else {
    label.append(caption, input);
  }
  return label;
}

function readParams(form) {
  const params = {};
  for (const input of form.querySelectorAll("[data-param]")) {
    const name = input.dataset.param;
    const kind = input.dataset.kind;
    if (kind === "boolean") { params[name] = input.checked; continue; }
    const raw = kind === "string" ? input.value : input.value.trim();
    if (raw === "") continue; // left out: the API says whether it was required
    if (kind === "enum") params[name] = JSON.parse(raw);
    else if (kind === "integer" || kind === "number") params[name] = Number(raw);
    else if (kind === "json") {
      try { params[name] = JSON.parse(raw); } catch { params[name] = raw; }
    } else params[name] = raw;
  }
  return params;
}

function showError(form, message) {
  const out = form.querySelector(".command-error");
  out.textContent = message;
  out.hidden = !message;
}

// The API's error message, or the status when the body says nothing.
export function errorMessage(r, body) {
  return body?.error?.message || `HTTP ${r.status} ${r.statusText}`.trim();
}

async function submit(enc, form, name, onAccepted) {
  const button = form.querySelector("button[type=submit]");
  showError(form, "");
  button.disabled = true;
  form.setAttribute("aria-busy", "true");
  try {
    const r = await send(`/api/v1/devices/${enc}/commands`, "POST", { name, params: readParams(form) });
    let body = null;
    try { body = await r.json(); } catch { /* not JSON: reported by status below */ }
    if (r.ok && body?.id) {
      // Drawn at once, in this task: the command's first state is always on screen, even
      // when its live frames have already moved on (they then win: CommandPanel.upsert).
      onAccepted(body);
      return;
    }
    let message = errorMessage(r, body);
    const retry = r.headers.get("retry-after");
    if (r.status === 429 && retry) message += ` (retry after ${retry} s)`;
    showError(form, message);
  } catch (err) {
    showError(form, `could not send: ${err.message || err}`);
  } finally {
    button.disabled = false;
    form.removeAttribute("aria-busy");
  }
}

function formFor(enc, command, onAccepted) {
  const form = document.createElement("form");
  form.className = "command";
  form.dataset.command = command.name;
  form.noValidate = true;
  const button = document.createElement("button");
  button.type = "submit";
  button.dataset.command = command.name;
  button.textContent = command.name;
  if (command.description) button.title = command.description;
  form.append(button);
  const schema = command.params_schema || {};
  const required = new Set(schema.required || []);
  for (const [name, prop] of Object.entries(schema.properties || {})) {
    form.append(fieldFor(name, prop || {}, required.has(name)));
  }
  if (command.description) {
    const d = document.createElement("span");
    d.className = "description";
    d.textContent = command.description;
    form.append(d);
  }
  const out = document.createElement("output");
  out.className = "command-error";
  out.setAttribute("role", "alert");
  out.hidden = true;
  form.append(out);
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    if (!button.disabled) submit(enc, form, command.name, onAccepted);
  });
  return form;
}

export function note(text, id) {
  const p = document.createElement("p");
  p.className = "empty";
  if (id) p.id = id;
  p.textContent = text;
  return p;
}

// Fill `typesEl` with the device's format and one form per command it accepts.
export function renderCommandForms(typesEl, enc, body, onAccepted) {
  const commands = body.format ? body.commands || [] : [];
  typesEl.dataset.format = body.format || "";
  if (!commands.length) {
    typesEl.replaceChildren(note("This device accepts no commands.", "no-command-types"));
    return;
  }
  const format = document.createElement("p");
  format.className = "command-format";
  format.innerHTML = "format <code></code>";
  format.querySelector("code").textContent = body.format;
  typesEl.replaceChildren(format, ...commands.map((c) => formFor(enc, c, onAccepted)));
}
