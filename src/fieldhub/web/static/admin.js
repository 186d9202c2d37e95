// The users & tokens page (templates/admin.html): the lists are rendered by the server; adding a
// user, creating a token and revoking one go through the REST API (/api/v1/users, /tokens),
// which checks, audits and answers with its own messages. A new token is shown once, here: the
// server keeps only its hash, so a reload cannot show it again.

import { errorMessage } from "./command_form.js";
import { refreshTimes } from "./format.js";
import { send } from "./http.js";

const DAY_MS = 86_400_000;

function showError(out, message) {
  out.textContent = message;
  out.hidden = !message;
}

async function answer(r) {
  try { return await r.json(); } catch { return null; /* not JSON: the status says it */ }
}

// Disable the form's button while `work` runs, and show what went wrong under the form.
async function busy(form, work) {
  const button = form.querySelector("button[type=submit]");
  const out = form.querySelector("output.form-error");
  showError(out, "");
  button.disabled = true;
  try {
    const problem = await work();
    showError(out, problem || "");
  } catch (err) {
    showError(out, err.message || String(err));
  } finally {
    button.disabled = false;
  }
}

const userForm = document.getElementById("user-form");
userForm.addEventListener("submit", (e) => {
  e.preventDefault();
  busy(userForm, async () => {
    const data = new FormData(userForm);
    const r = await send("/api/v1/users", "POST", {
      username: data.get("username"),
      password: data.get("password"),
      role: data.get("role"),
    });
    if (!r.ok) return errorMessage(r, await answer(r));
    // The list is the server's to render (roles, states); nothing secret is lost by reloading.
    location.reload();
    return "";
  });
});

const tokenForm = document.getElementById("token-form");
const newToken = document.getElementById("new-token");
tokenForm.addEventListener("submit", (e) => {
  e.preventDefault();
  busy(tokenForm, async () => {
    const data = new FormData(tokenForm);
    const days = Number(data.get("expires_days") || 0);
    const body = { name: data.get("name"), role: data.get("role") };
    if (days > 0) body.expires_at = new Date(Date.now() + days * DAY_MS).toISOString();
    const r = await send("/api/v1/tokens", "POST", body);
    const created = await answer(r);
    if (!r.ok || !created?.token) return errorMessage(r, created);
    document.getElementById("new-token-value").textContent = created.token;
    newToken.hidden = false;
    tokenForm.reset();
    addTokenRow(created);
    return "";
  });
});

function cell(label, text, className) {
  const td = document.createElement("td");
  td.dataset.label = label;
  if (className) td.className = className;
  if (text !== undefined) td.textContent = text;
  return td;
}

function addTokenRow(t) {
  const tbody = document.querySelector("#tokens tbody");
  const row = document.createElement("tr");
  const id = t.token_id ?? t.id;
  row.dataset.tokenId = id;
  const idCell = cell("Id", undefined, "token-id");
  const code = document.createElement("code");
  code.textContent = id;
  idCell.append(code);
  const actions = cell("Actions", undefined, "actions");
  const revoke = document.createElement("button");
  revoke.type = "button";
  revoke.className = "revoke";
  revoke.textContent = "Revoke";
  actions.append(revoke);
  const roleCell = cell("Role", undefined, "role");
  const tag = document.createElement("span");
  tag.className = "tag";
  tag.textContent = t.role;
  roleCell.append(tag);
  row.append(
    idCell,
    cell("Name", t.name, "name"),
    roleCell,
    cell("Created by", t.created_by ?? ""),
    cell("Expires", t.expires_at ?? "never"),
    cell("Last used", "never"),
    actions,
  );
  tbody.prepend(row);
  document.getElementById("no-tokens")?.remove();
}

const tokenError = document.getElementById("token-error");
document.getElementById("tokens").addEventListener("click", async (e) => {
  const button = e.target.closest("button.revoke");
  const row = button?.closest("tr[data-token-id]");
  if (!row || button.disabled) return;
  const id = row.dataset.tokenId;
  const name = row.querySelector("td.name").textContent;
  if (!confirm(`Revoke the token ${name} (${id})? Programs using it are refused at once.`)) return;
  showError(tokenError, "");
  button.disabled = true;
  try {
    const r = await send(`/api/v1/tokens/${encodeURIComponent(id)}`, "DELETE");
    if (!r.ok) {
      showError(tokenError, `Could not revoke ${name}: ${errorMessage(r, await answer(r))}`);
      button.disabled = false;
      return;
    }
    row.classList.add("revoked");
    button.replaceWith("revoked");
  } catch (err) {
    showError(tokenError, `Could not revoke ${name}: ${err.message || err}`);
    button.disabled = false;
  }
});

refreshTimes(document.querySelector("main"));
