// The ML page (templates/ml.html): the window loop at a glance (docs/ml.md), what the old
// stack's Grafana panels showed. Every REFRESH_MS one stats call and one decisions call feed the
// counters, the confidence histogram, the per-device table and the recent decisions; the chosen
// device's readings (four series calls), commands, loop configuration and decisions are re-read
// every DEVICE_REFRESH_MS for its position chart, feature correlations and accuracy against
// manual corrections. Models are read once and after an admin's activate or roll back.

import { lineChart } from "./charts.js";
import { US, formatValue, nowUs, refreshTimes, usOf } from "./format.js";
import { getJSON, send } from "./http.js";
import { loadSeries } from "./series.js";
import { allows } from "./session.js";
import { decisionRow, errorOf } from "./window_decisions.js";

const REFRESH_MS = 5_000;
const DEVICE_REFRESH_MS = 30_000;
// Decisions read per refresh: the per-device table counts within them.
const DECISIONS = 200;
const RECENT_ROWS = 50;
const DAY_US = 86_400 * US;
// Correlations over minute means: raw readings of a day would be one call per 10,000 rows.
const CORR_INTERVAL_S = 60;
const MIN_PAIRS = 3;
const COMMANDS = 200;
const ACCURACY_ROWS = 20;
const HISTORY_ROWS = 5;
const CHART_HEIGHT = 240;
const FEATURES = ["temperature", "humidity", "sound_volume"];
const POSITION = "window_position";
const RECENT_COLUMNS = ["time", "device", "trigger", "reason", "outcome", "position", "confidence", "target", "guard"];

const errorBox = document.getElementById("ml-error");
const select = document.getElementById("ml-device");
const note = document.getElementById("ml-device-note");
const modelsTable = document.getElementById("models");
const modelsError = document.getElementById("models-error");
// For tests: what each panel shows, as data.
window.fieldhub = { stats: null, decisions: [], models: null, device: "", correlation: {}, accuracy: null, ready: false };

let chosen = select.dataset.initial || "";
let deviceLoadedAt = 0;
let deviceDecisions = [];
let positionSeries = { x: [], y: [] };
let chart = null;

function showError(box, message) {
  box.textContent = message;
  box.hidden = !message;
}

function fmt(value, digits = null) {
  if (value === null || value === undefined || !Number.isFinite(value)) return "–";
  return digits === null ? formatValue(value) : value.toFixed(digits);
}

// --- stats ------------------------------------------------------------------------------------

function showStats(stats) {
  document.getElementById("ml-total").textContent = String(stats.total);
  document.getElementById("latency-p50").textContent = fmt(stats.latency_p50_ms);
  document.getElementById("latency-p99").textContent = fmt(stats.latency_p99_ms);
  const outcomes = document.getElementById("ml-outcomes");
  outcomes.replaceChildren(...Object.entries(stats.outcomes).filter(([, n]) => n > 0).map(([name, n]) => {
    const tag = document.createElement("span");
    tag.className = "tag outcome-tag";
    tag.dataset.outcome = name;
    tag.textContent = `${name} ${n}`;
    return tag;
  }));
  const hist = document.getElementById("histogram");
  const most = Math.max(1, ...stats.confidence_histogram);
  hist.replaceChildren(...stats.confidence_histogram.map((n, i) => {
    const bar = document.createElement("div");
    bar.className = "bucket";
    bar.dataset.bucket = String(i);
    bar.title = `confidence ${(i / 10).toFixed(1)}–${((i + 1) / 10).toFixed(1)}: ${n}`;
    bar.innerHTML = '<span class="count"></span><span class="fill"></span><span class="edge"></span>';
    bar.querySelector(".count").textContent = String(n);
    bar.querySelector(".fill").style.height = `${(100 * n) / most}%`;
    bar.querySelector(".edge").textContent = (i / 10).toFixed(1);
    return bar;
  }));
}

// --- decisions --------------------------------------------------------------------------------

function showDecisions(decisions) {
  const tbody = document.querySelector("#decisions tbody");
  tbody.replaceChildren(...decisions.slice(0, RECENT_ROWS).map((d) => decisionRow(d, RECENT_COLUMNS)));
  document.getElementById("decisions-empty").hidden = decisions.length > 0;
  refreshTimes(tbody);

  const byDevice = new Map(); // newest first: the first seen is the last outcome
  for (const d of decisions) {
    const seen = byDevice.get(d.device_id);
    if (seen) seen.n += 1;
    else byDevice.set(d.device_id, { n: 1, last: d.outcome });
  }
  document.getElementById("per-device-of").textContent = String(decisions.length);
  const rows = [...byDevice.entries()].sort((a, b) => b[1].n - a[1].n || a[0].localeCompare(b[0]));
  document.querySelector("#per-device tbody").replaceChildren(...rows.map(([id, { n, last }]) => {
    const tr = document.createElement("tr");
    tr.dataset.device = id;
    tr.innerHTML = '<td class="device" data-label="Device"><a></a></td><td class="count" data-label="Decisions"></td><td class="outcome" data-label="Last outcome"><span class="tag outcome-tag"></span></td>';
    const a = tr.querySelector("a");
    a.href = `/devices/${encodeURIComponent(id)}`;
    a.textContent = id;
    tr.querySelector(".count").textContent = String(n);
    const tag = tr.querySelector(".outcome-tag");
    tag.dataset.outcome = last;
    tag.textContent = last;
    return tr;
  }));
  offerDevices([...byDevice.keys()]);
}

function offerDevices(ids) {
  const known = new Set([...select.options].map((o) => o.value).filter(Boolean));
  const all = [...new Set([...known, ...ids, ...(chosen ? [chosen] : [])])].sort();
  if (all.length === known.size && all.every((id) => known.has(id))) return;
  select.replaceChildren(...all.map((id) => new Option(id, id)));
  if (!chosen && all.length) chosen = all[0];
  select.value = chosen;
}

// --- the chosen device --------------------------------------------------------------------------

// Pearson's r of the pairs of `a` and `b` at the same timestamps: {r, n} (r null when undefined).
export function correlation(a, b) {
  const other = new Map(b.x.map((x, i) => [x, b.y[i]]));
  const xs = [];
  const ys = [];
  a.x.forEach((x, i) => {
    if (other.has(x) && a.y[i] !== null && other.get(x) !== null) { xs.push(a.y[i]); ys.push(other.get(x)); }
  });
  const n = xs.length;
  if (n < MIN_PAIRS) return { r: null, n };
  const mean = (v) => v.reduce((s, q) => s + q, 0) / n;
  const mx = mean(xs);
  const my = mean(ys);
  let sxy = 0;
  let sxx = 0;
  let syy = 0;
  for (let i = 0; i < n; i++) {
    sxy += (xs[i] - mx) * (ys[i] - my);
    sxx += (xs[i] - mx) ** 2;
    syy += (ys[i] - my) ** 2;
  }
  return { r: sxx > 0 && syy > 0 ? sxy / Math.sqrt(sxx * syy) : null, n };
}

function showCorrelations(series) {
  const names = [...FEATURES, POSITION];
  const found = {};
  const rows = [];
  for (let i = 0; i < names.length; i++) {
    for (let j = i + 1; j < names.length; j++) {
      const c = correlation(series[names[i]], series[names[j]]);
      const key = `${names[i]}~${names[j]}`;
      found[key] = c;
      const tr = document.createElement("tr");
      tr.dataset.pair = key;
      tr.innerHTML = "<th></th><td></td>";
      tr.querySelector("th").textContent = `${names[i]} · ${names[j]}`;
      tr.querySelector("td").textContent = c.r === null ? `– (${c.n} pairs)` : `${c.r.toFixed(2)} (${c.n} pairs)`;
      rows.push(tr);
    }
  }
  document.querySelector("#correlation tbody").replaceChildren(...rows);
  document.getElementById("correlation-empty").hidden = Object.values(found).some((c) => c.r !== null);
  window.fieldhub.correlation = found;
}

// Decisions that sent a position, each with the first manual set_window after it within the
// device's manual override time: how far the model's target was from what the person chose.
function showAccuracy(decisions, commands, overrideS) {
  const manual = commands
    .filter((c) => c.name === "set_window" && !c.id.startsWith("ml-") && Number.isFinite(c.params?.position))
    .map((c) => ({ us: usOf(c.created), position: c.params.position }))
    .sort((a, b) => a.us - b.us);
  const pairs = [];
  for (const d of decisions) {
    if (d.target_position === null) continue;
    const at = usOf(d.at);
    const next = manual.find((m) => m.us > at && m.us <= at + overrideS * US);
    if (next) pairs.push({ at: d.at, target: d.target_position, manual: next.position, error: Math.abs(d.target_position - next.position) });
  }
  document.getElementById("accuracy").hidden = !pairs.length;
  const summary = document.getElementById("accuracy-summary");
  if (!pairs.length) {
    summary.textContent = "No decision of this device was followed by a manual correction.";
  } else {
    const mae = pairs.reduce((s, p) => s + p.error, 0) / pairs.length;
    const within = pairs.filter((p) => p.error <= 10).length / pairs.length;
    summary.textContent = `${pairs.length} corrected decisions: mean error ${mae.toFixed(1)} points, ${Math.round(within * 100)} % within 10`;
  }
  document.querySelector("#accuracy tbody").replaceChildren(...pairs.slice(0, ACCURACY_ROWS).map((p) => {
    const tr = document.createElement("tr");
    for (const [label, value] of [["Decided", null], ["Target", p.target], ["Manual", p.manual], ["Error", p.error]]) {
      const td = document.createElement("td");
      td.dataset.label = label;
      if (value === null) {
        const t = document.createElement("time");
        t.dataset.us = String(usOf(p.at));
        td.append(t);
      } else {
        td.textContent = String(value);
      }
      tr.append(td);
    }
    return tr;
  }));
  refreshTimes(document.getElementById("accuracy"));
  window.fieldhub.accuracy = pairs;
}

// uPlot plugin: the model's position at each decision, a dot over the window_position line.
function decisionDots() {
  const css = getComputedStyle(document.body);
  const color = css.getPropertyValue("--warn").trim() || "#d29922";
  return {
    hooks: {
      draw: [(u) => {
        const { ctx } = u;
        ctx.save();
        ctx.fillStyle = color;
        for (const d of deviceDecisions) {
          if (d.position === null) continue;
          const x = u.valToPos(usOf(d.at) / US, "x", true);
          const y = u.valToPos(d.position, "y", true);
          ctx.beginPath();
          ctx.arc(x, y, 4 * devicePixelRatio, 0, 2 * Math.PI);
          ctx.fill();
        }
        ctx.restore();
      }],
    },
  };
}

function drawPosition() {
  const box = document.querySelector("#position-chart .plot");
  const data = [positionSeries.x.map((us) => us / US), positionSeries.y];
  if (chart) { chart.setData(data); return; }
  chart = lineChart(box, {
    label: POSITION,
    height: CHART_HEIGHT,
    options: {
      plugins: [decisionDots()],
      cursor: { drag: { x: false, y: false } },
      scales: { x: { time: true, range: () => [nowUs() / US - DAY_US / US, nowUs() / US] }, y: { range: [0, 100] } },
    },
  }, data);
}

async function loadDevice() {
  const device = chosen;
  if (!device) return;
  const enc = encodeURIComponent(device);
  const startUs = nowUs() - DAY_US;
  const empty = { x: [], y: [], n: [] };
  const [series, commands, loop, decisions] = await Promise.all([
    Promise.all([...FEATURES, POSITION].map((m) => loadSeries(enc, m, startUs, null, CORR_INTERVAL_S).catch(() => empty))),
    getJSON(`/api/v1/devices/${enc}/commands?limit=${COMMANDS}`).catch(() => ({ data: [] })),
    getJSON(`/api/v1/ml/devices/${enc}`),
    getJSON(`/api/v1/ml/decisions?device=${enc}&limit=${DECISIONS}`),
  ]);
  if (device !== chosen) return; // another device was chosen meanwhile
  const byName = Object.fromEntries([...FEATURES, POSITION].map((m, i) => [m, series[i]]));
  deviceDecisions = decisions.data.filter((d) => usOf(d.at) >= startUs);
  positionSeries = byName[POSITION];
  drawPosition();
  showCorrelations(byName);
  showAccuracy(decisions.data, commands.data, loop.config.guards.manual_override_s);
  note.textContent = `${decisions.data.length} decisions; ${positionSeries.x.length} minutes with window_position`;
  window.fieldhub.device = device;
  deviceLoadedAt = Date.now();
}

// --- models --------------------------------------------------------------------------------------

function calibrationText(rows) {
  return (rows || []).map((c) => `≥${c.c}: ${c.n}, ${Math.round(c.within_10 * 100)} %`).join("; ");
}

function showModels(models) {
  window.fieldhub.models = models;
  document.getElementById("models-head").textContent =
    `${models.name}: version ${models.active ?? "none"} active, version ${models.serving ?? "none"} serving`;
  document.getElementById("models-history").textContent = models.history.slice(-HISTORY_ROWS).reverse()
    .map((h) => `${h.action} v${h.version} by ${h.by} at ${h.at}`).join("; ");
  const admin = modelsTable.dataset.admin === "1" && allows("admin");
  const rows = [...models.versions].sort((a, b) => b.version - a.version).map((v) => {
    const m = v.manifest.metrics || {};
    const tr = document.createElement("tr");
    tr.dataset.version = String(v.version);
    tr.dataset.active = v.active ? "1" : "0";
    const cells = [
      ["version", "Version", `v${v.version}`],
      ["parent", "Parent", v.parent === null ? "–" : `v${v.parent}`],
      ["created", "Created", null],
      ["mae", "MAE", fmt(m.mae, 2)],
      ["within", "Within 10", Number.isFinite(m.within_10) ? `${(m.within_10 * 100).toFixed(1)} %` : "–"],
      ["calibration", "Calibration", calibrationText(m.calibration)],
      ["state", "State", [v.active ? "active" : "", v.version === models.serving ? "serving" : ""].filter(Boolean).join(", ")],
    ];
    for (const [name, label, value] of cells) {
      const td = document.createElement("td");
      td.className = name;
      td.dataset.label = label;
      if (value === null) {
        const t = document.createElement("time");
        t.dataset.us = String(usOf(v.created));
        td.append(t);
      } else {
        td.textContent = value;
      }
      tr.append(td);
    }
    if (admin) {
      const td = document.createElement("td");
      td.className = "actions";
      // The active version too: activating validates again (checksums, golden outputs).
      const b = document.createElement("button");
      b.type = "button";
      b.className = "activate";
      b.textContent = "Activate";
      b.title = v.active ? "Validate it again and keep serving it" : `Validate v${v.version} and serve it`;
      b.addEventListener("click", () => modelAction(`/api/v1/ml/models/${v.version}/activate`, b));
      td.append(b);
      tr.append(td);
    }
    return tr;
  });
  modelsTable.querySelector("tbody").replaceChildren(...rows);
  refreshTimes(modelsTable);
}

async function modelAction(url, button) {
  button.disabled = true;
  try {
    const r = await send(url, "POST");
    if (!r.ok) { showError(modelsError, await errorOf(r)); return; }
    showError(modelsError, "");
    showModels(await r.json());
  } catch (err) {
    showError(modelsError, String(err));
  } finally {
    button.disabled = false;
  }
}

// --- refresh -------------------------------------------------------------------------------------

async function refresh() {
  const [stats, page] = await Promise.all([
    getJSON("/api/v1/ml/stats"),
    getJSON(`/api/v1/ml/decisions?limit=${DECISIONS}`),
  ]);
  window.fieldhub.stats = stats;
  window.fieldhub.decisions = page.data;
  showStats(stats);
  showDecisions(page.data);
  if (chosen && (window.fieldhub.device !== chosen || Date.now() - deviceLoadedAt >= DEVICE_REFRESH_MS)) {
    await loadDevice();
  }
  document.getElementById("ml-updated").textContent = `Updated ${new Date().toLocaleTimeString()}.`;
  showError(errorBox, "");
  window.fieldhub.ready = true;
}

function refreshSafely() {
  return refresh().catch((err) => showError(errorBox, String(err)));
}

select.addEventListener("change", () => {
  chosen = select.value;
  const url = new URL(location.href);
  url.searchParams.set("device", chosen);
  history.replaceState(null, "", url);
  loadDevice().catch((err) => showError(errorBox, String(err)));
});
const rollback = document.getElementById("rollback");
if (rollback && allows("admin")) rollback.addEventListener("click", () => modelAction("/api/v1/ml/models/rollback", rollback));
else rollback?.remove();
getJSON("/api/v1/ml/models").then(showModels).catch((err) => showError(modelsError, String(err)));
setInterval(refreshSafely, REFRESH_MS);
await refreshSafely();
