// The rule page (templates/rule.html): the preview of the document in the text box (operators)
// drawn on the metric's chart — readings, the trigger level (dashed) and the clear level
// (dotted) with the band between them, the alarm spans shaded — through the same evaluation as
// the live engine (POST /api/v1/rules/preview); admins save the text as the rule's next version
// and enable or disable the rule (each a new version; disabling clears its open alarms).

import { lineChart } from "./charts.js";
import { US, isoOf, nowUs } from "./format.js";
import { send } from "./http.js";
import { fitView, loadRaw, loadSeries } from "./series.js";

const CHART_HEIGHT = 280;

const head = document.getElementById("rule");
const ruleId = head.dataset.rule;
const form = document.getElementById("preview-form");
const note = document.getElementById("preview-note");
const textarea = document.getElementById("rule-document");
const errorBox = document.getElementById("rule-error");
// For tests: the last preview and what the chart draws.
window.fieldhub = { preview: null, levels: [], ready: false };

// The document as typed; null (with the error shown) when it is not JSON.
function documentText() {
  try {
    const doc = JSON.parse(textarea.value);
    errorBox.hidden = true;
    return doc;
  } catch (err) {
    errorBox.textContent = `Not JSON: ${err.message}`;
    errorBox.hidden = false;
    return null;
  }
}

// The condition's first metric and its levels for `device` (its override applied):
// {metric, trigger, clear} (levels may be null: no_data and schedule have none).
function levelsOf(doc, device) {
  const found = [];
  const walk = (c) => {
    if (!c || typeof c !== "object") return;
    for (const [kind, body] of Object.entries(c)) {
      if (kind === "all" || kind === "any") body.forEach(walk);
      else found.push({ kind, ...body });
    }
  };
  walk(doc.condition);
  const leaf = found.find((c) => c.metric) || found[0];
  if (!leaf) return { metric: null, trigger: null, clear: null };
  const p = { ...leaf, ...(doc.overrides?.[device] || {}) };
  if (leaf.kind === "threshold") {
    const trigger = p.above ?? p.below ?? null;
    const clear = (p.above !== undefined ? p.clear_below : p.clear_above) ?? trigger;
    return { metric: p.metric, trigger, clear };
  }
  if (leaf.kind === "rate") return { metric: p.metric, trigger: null, clear: null };
  return { metric: p.metric || null, trigger: null, clear: null };
}

async function readings(device, metric, view) {
  const enc = encodeURIComponent(device);
  if (view.intervalUs === 0) {
    const { byMetric } = await loadRaw(enc, view.startUs, null);
    return byMetric[metric] || { x: [], y: [] };
  }
  return loadSeries(enc, metric, view.startUs, null, view.intervalUs / US);
}

// uPlot plugin: the spans shaded, the levels drawn across the plot, the band between them.
function overlay(levels, spans) {
  const css = getComputedStyle(document.body);
  const bad = css.getPropertyValue("--bad").trim() || "#f85149";
  const warn = css.getPropertyValue("--warn").trim() || "#d29922";
  return {
    hooks: {
      draw: [(u) => {
        const { ctx, bbox } = u;
        ctx.save();
        ctx.globalAlpha = 0.18;
        ctx.fillStyle = bad;
        for (const s of spans) {
          const x0 = Math.max(bbox.left, u.valToPos(s.fired_us / US, "x", true));
          const x1 = Math.min(bbox.left + bbox.width, u.valToPos((s.cleared_us ?? u.scales.x.max * US) / US, "x", true));
          if (x1 > x0) ctx.fillRect(x0, bbox.top, x1 - x0, bbox.height);
        }
        const y = (v) => u.valToPos(v, "y", true);
        if (levels.trigger !== null && levels.clear !== null && levels.trigger !== levels.clear) {
          ctx.globalAlpha = 0.1;
          ctx.fillStyle = warn;
          const [a, b] = [y(levels.trigger), y(levels.clear)].sort((p, q) => p - q);
          ctx.fillRect(bbox.left, a, bbox.width, b - a);
        }
        ctx.globalAlpha = 1;
        ctx.lineWidth = 2;
        for (const [level, dash, color] of [[levels.trigger, [8, 6], bad], [levels.clear, [2, 4], warn]]) {
          if (level === null) continue;
          ctx.strokeStyle = color;
          ctx.setLineDash(dash);
          ctx.beginPath();
          ctx.moveTo(bbox.left, y(level));
          ctx.lineTo(bbox.left + bbox.width, y(level));
          ctx.stroke();
        }
        ctx.restore();
      }],
    },
  };
}

let chart = null;

function draw(series, levels, spans, view) {
  const box = document.querySelector("#preview-chart .plot");
  chart?.destroy();
  box.replaceChildren();
  const marks = [levels.trigger, levels.clear].filter((v) => v !== null);
  const endS = nowUs() / US;
  chart = lineChart(
    box,
    {
      label: levels.metric || "",
      height: CHART_HEIGHT,
      options: {
        plugins: [overlay(levels, spans)],
        scales: {
          x: { time: true, range: () => [view.startUs / US, endS] },
          y: {
            range: (u, min, max) => {
              const lo = Math.min(min ?? 0, ...marks);
              const hi = Math.max(max ?? 1, ...marks);
              const pad = (hi - lo) * 0.1 || 1;
              return [lo - pad, hi + pad];
            },
          },
        },
      },
    },
    [series.x.map((us) => us / US), series.y],
  );
}

function listSpans(spans) {
  const tbody = document.querySelector("#preview-spans tbody");
  tbody.replaceChildren();
  for (const s of spans) {
    const row = document.createElement("tr");
    row.innerHTML = '<td class="fired"></td><td class="cleared"></td>';
    row.querySelector(".fired").textContent = s.fired;
    row.querySelector(".cleared").textContent = s.cleared || "still active at the end";
    tbody.append(row);
  }
}

async function preview(range) {
  const doc = documentText();
  if (!doc) return;
  const device = form.device.value.trim();
  if (!device) {
    note.textContent = "choose a device in the rule's scope";
    return;
  }
  window.fieldhub.ready = false;
  const view = { range, startUs: 0, endUs: null, intervalUs: 0 };
  fitView(view);
  note.textContent = "running…";
  const r = await send("/api/v1/rules/preview", "POST", {
    rule: doc,
    devices: [device],
    start: isoOf(view.startUs),
    end: isoOf(nowUs()),
  });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) {
    note.textContent = body?.error?.message || `HTTP ${r.status}`;
    return;
  }
  const result = body.data.find((d) => d.device === device) || body.data[0] || { spans: [], edges: [], actions: [] };
  const levels = levelsOf(doc, result.device || device);
  document.getElementById("preview-metric").textContent = levels.metric || "";
  const series = levels.metric ? await readings(device, levels.metric, view) : { x: [], y: [] };
  draw(series, levels, result.spans, view);
  listSpans(result.spans);
  const n = result.spans.length;
  note.textContent = `${n} alarm span${n === 1 ? "" : "s"}, ${result.actions.length} action${result.actions.length === 1 ? "" : "s"}${result.truncated ? " (more not listed)" : ""}`;
  window.fieldhub = { preview: result, levels, ready: true };
}

async function save() {
  const doc = documentText();
  if (!doc) return;
  const r = await send(`/api/v1/rules/${encodeURIComponent(ruleId)}`, "PUT", doc);
  const body = await r.json().catch(() => ({}));
  if (!r.ok) {
    errorBox.textContent = body?.error?.message || `HTTP ${r.status}`;
    errorBox.hidden = false;
    return;
  }
  location.reload();
}

form?.addEventListener("submit", (e) => {
  e.preventDefault();
  preview(e.submitter?.dataset.range || "24h").catch((err) => { note.textContent = String(err); });
});
async function toggle(button) {
  const r = await send(`/api/v1/rules/${encodeURIComponent(ruleId)}/${button.dataset.to}`, "POST");
  if (!r.ok) {
    const body = await r.json().catch(() => ({}));
    errorBox.textContent = body?.error?.message || `HTTP ${r.status}`;
    errorBox.hidden = false;
    return;
  }
  location.reload();
}

document.getElementById("rule-toggle")?.addEventListener("click", (e) => {
  toggle(e.currentTarget).catch((err) => {
    errorBox.textContent = String(err);
    errorBox.hidden = false;
  });
});
document.getElementById("rule-save")?.addEventListener("click", () => {
  save().catch((err) => {
    errorBox.textContent = String(err);
    errorBox.hidden = false;
  });
});
