// Values and times as the dashboard shows them. Times on the wire are integer epoch
// microseconds (docs/live.md); the REST API's are ISO 8601.

export const US = 1e6;

// Same rule as web/templating.py format_value: at most two decimals, no trailing zeros.
export function formatValue(v) {
  if (!Number.isFinite(v)) return String(v);
  const text = String(Number(v.toFixed(2)));
  return text === "-0" ? "0" : text;
}

// Same rule as web/pages.py _ago.
export function ago(us) {
  const s = Math.max(0, Math.floor(Date.now() / 1000 - us / US));
  if (s >= 86400) return `${Math.floor(s / 86400)} d ago`;
  if (s >= 3600) return `${Math.floor(s / 3600)} h ago`;
  if (s >= 60) return `${Math.floor(s / 60)} min ago`;
  return `${s} s ago`;
}

// Epoch microseconds -> ISO 8601 with all six fractional digits.
export function isoOf(us) {
  const d = new Date(Math.floor(us / 1000));
  return d.toISOString().replace(/\.\d{3}Z$/, `.${String(us % US).padStart(6, "0")}Z`);
}

// ISO 8601 from the API (microseconds optional) -> exact epoch microseconds.
export function usOf(iso) {
  const m = /^(.*?)(?:\.(\d{1,6}))?Z$/.exec(iso);
  if (!m) return Date.parse(iso) * 1000;
  const frac = (m[2] || "").padEnd(6, "0");
  return Date.parse(`${m[1]}Z`) * 1000 + Number(frac);
}

// Now, in epoch microseconds.
export function nowUs() {
  return Date.now() * 1000;
}

// Every `<time data-us>` under `root` says how long ago it was, with the exact time as its title.
export function refreshTimes(root = document) {
  for (const t of root.querySelectorAll("time[data-us]")) {
    const us = Number(t.dataset.us);
    if (!us) continue;
    t.textContent = (t.classList.contains("since") ? "since " : "") + ago(us);
    t.title = isoOf(us);
  }
}
