// Talking to the REST API with the page's session: the cookie goes by itself (same origin), the
// CSRF token must be sent with every request that changes something (X-CSRF-Token; the API
// refuses a cookie-authenticated POST/PUT/PATCH/DELETE without it). A 401 means the session has
// ended: the page goes to the login page instead of showing errors it cannot recover from.

import { csrfToken, toLogin } from "./session.js";

const SAFE = new Set(["GET", "HEAD", "OPTIONS"]);

// GET `url` as JSON; an HTTP error status throws.
export async function getJSON(url) {
  const r = await fetch(url, { headers: { accept: "application/json" } });
  if (r.status === 401) toLogin();
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return r.json();
}

// `method` on `url` with `json` (if given) as the body; answers the Response, whatever its
// status, for the caller to read the API's own error message.
export async function send(url, method, json) {
  const headers = { accept: "application/json" };
  if (json !== undefined) headers["content-type"] = "application/json";
  if (!SAFE.has(method.toUpperCase())) headers["x-csrf-token"] = csrfToken();
  const r = await fetch(url, {
    method,
    headers,
    body: json === undefined ? undefined : JSON.stringify(json),
    credentials: "same-origin",
  });
  if (r.status === 401) toLogin();
  return r;
}
