// fieldhub dashboard: the one ES module. Pages arrive complete from the server; this keeps them
// live over /api/v1/live (docs/live.md). No build step: plain modules, uPlot vendored and pinned.

const US = 1e6;
const page = document.body.dataset.page;

// ---- shared helpers ---------------------------------------------------------------------------

// Same rule as web/pages.py format_value: at most two decimals, no trailing zeros.
export function formatValue(v) {
  if (!Number.isFinite(v)) return String(v);
  const text = String(Number(v.toFixed(2)));
  return text === "-0" ? "0" : text;
}

function ago(us) {
  const s = Math.max(0, Math.floor(Date.now() / 1000 - us / US));
  if (s >= 86400) return `${Math.floor(s / 86400)} d ago`;
  if (s >= 3600) return `${Math.floor(s / 3600)} h ago`;
  if (s >= 60) return `${Math.floor(s / 60)} min ago`;
  return `${s} s ago`;
}

function isoOf(us) {
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

function refreshTimes(root = document) {
  for (const t of root.querySelectorAll("time[data-us]")) {
    const us = Number(t.dataset.us);
    if (!us) continue;
    t.textContent = (t.classList.contains("since") ? "since " : "") + ago(us);
    t.title = isoOf(us);
  }
}

function setBadge(badge, state) {
  badge.dataset.state = state;
  badge.textContent = state;
}

// Stale is a matter of time passing, not of an event: re-evaluated every second on the client
// with the same rule as the store (online and silent longer than stale_after_s).
function refreshStale(holder, badge) {
  const lastSeen = Number(holder.dataset.lastSeen);
  const staleAfter = Number(holder.dataset.staleAfter);
  if (!lastSeen || !staleAfter) return;
  const silent = Date.now() * 1000 - lastSeen > staleAfter * US;
  if (badge.dataset.state === "online" && silent) setBadge(badge, "stale");
  else if (badge.dataset.state === "stale" && !silent) setBadge(badge, "online");
}

const compact = new Intl.NumberFormat(undefined, { notation: "compact", maximumFractionDigits: 3 });
// Axis labels in compact form (3.54M): full digits would need more room than a phone has.
const axisValues = (u, splits) => splits.map((v) => compact.format(v));

function axes(css, ySize) {
  const stroke = css.getPropertyValue("--muted");
  const grid = { stroke: css.getPropertyValue("--grid") };
  return [{ stroke, grid }, { stroke, grid, size: ySize, values: axisValues }];
}

async function getJSON(url) {
  const r = await fetch(url, { headers: { accept: "application/json" } });
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return r.json();
}

// ---- the live connection ----------------------------------------------------------------------

// One WebSocket per page; reconnects with backoff and, after a gap or a `lagged` frame, asks the
// page to re-read its state over HTTP (onResync) so nothing shown is stale after a hiccup.
class Live {
  constructor(handlers, onResync) {
    this.handlers = handlers;
    this.onResync = onResync;
    this.subscription = null;
    this.delay = 500;
    this.connectedOnce = false;
    this.resyncWhenSubscribed = false;
    this.connect();
  }

  subscribe(sub) {
    this.subscription = { op: "subscribe", ...sub };
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(this.subscription));
  }

  connect() {
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${proto}//${location.host}/api/v1/live`);
    this.ws = ws;
    document.body.dataset.live = "connecting";
    ws.onopen = () => {
      this.delay = 500;
      // After a reconnect, what happened while we were away is read back over HTTP once the
      // new subscription is in place (a re-subscribe on an open socket needs no resync).
      this.resyncWhenSubscribed = this.connectedOnce;
      this.connectedOnce = true;
      if (this.subscription) ws.send(JSON.stringify(this.subscription));
    };
    ws.onmessage = (e) => {
      const frame = JSON.parse(e.data);
      if (frame.type === "subscribed") {
        document.body.dataset.live = "connected";
        if (this.resyncWhenSubscribed) {
          this.resyncWhenSubscribed = false;
          this.onResync?.();
        }
      } else if (frame.type === "lagged") {
        this.onResync?.();
      } else if (frame.type === "error") {
        console.error("live:", frame.error.code, frame.error.message);
      }
      this.handlers[frame.type]?.(frame);
    };
    ws.onclose = () => {
      document.body.dataset.live = "disconnected";
      setTimeout(() => this.connect(), this.delay);
      this.delay = Math.min(this.delay * 2, 10000);
    };
  }
}

// ---- fleet page -------------------------------------------------------------------------------

function fleetPage() {
  const table = document.getElementById("fleet");
  const tbody = () => table.querySelector("tbody");
  const rowOf = (id) => tbody().querySelector(`tr[data-device="${CSS.escape(id)}"]`);
  const visibleIds = () => [...tbody().querySelectorAll("tr[data-device]")].map((r) => r.dataset.device);
  const limit = Number(table.dataset.limit);
  let live;

  const subscribe = () =>
    live.subscribe({ devices: visibleIds(), events: ["readings", "presence", "devices", "stats"] });

  function setValue(row, metric, ts, value) {
    let cell = row.querySelector(`.value[data-metric="${CSS.escape(metric)}"]`);
    if (!cell) {
      const chip = document.createElement("span");
      chip.className = "chip";
      chip.innerHTML = '<span class="metric"></span> <span class="value"></span>';
      chip.querySelector(".metric").textContent = metric;
      cell = chip.querySelector(".value");
      cell.dataset.metric = metric;
      cell.dataset.ts = "0";
      row.querySelector("td.values").append(chip);
    }
    if (ts < Number(cell.dataset.ts)) return; // a late (backfilled) reading is not the latest
    cell.dataset.ts = String(ts);
    cell.textContent = formatValue(value);
    cell.classList.remove("flash");
    void cell.offsetWidth; // restart the highlight animation
    cell.classList.add("flash");
  }

  function seen(row, ts) {
    const now = Date.now() * 1000;
    const at = Math.min(ts, now);
    if (at > Number(row.dataset.lastSeen || 0)) {
      row.dataset.lastSeen = String(at);
      row.querySelector("td.seen time").dataset.us = String(at);
    }
  }

  function insertRow(device) {
    if (table.dataset.insertNew !== "1" || rowOf(device.id)) return;
    const rows = [...tbody().querySelectorAll("tr[data-device]")];
    const before = rows.find((r) => r.dataset.device > device.id);
    if (!before && rows.length >= limit) return; // sorts after this page
    const row = document.getElementById("fleet-row").content.firstElementChild.cloneNode(true);
    row.dataset.device = device.id;
    row.dataset.lastSeen = String(device.first_seen);
    row.dataset.staleAfter = "";
    const link = row.querySelector("td.device a");
    link.href = `/devices/${encodeURIComponent(device.id)}`;
    link.textContent = device.id;
    row.querySelector(".profile").textContent = device.profile;
    row.querySelector("td.seen time").dataset.us = String(device.first_seen);
    tbody().insertBefore(row, before || null);
    if (tbody().querySelectorAll("tr[data-device]").length > limit) tbody().lastElementChild.remove();
    // The readings that came with the device's first message (sent before we could subscribe).
    for (const [metric, ts, value] of device.values || []) setValue(row, metric, ts, value);
    const matching = table.dataset.filtered === "1" ? null : document.querySelector(".matching");
    if (matching) {
      const n = tbody().querySelectorAll("tr[data-device]").length;
      matching.textContent = `${Math.max(n, Number(document.getElementById("count-devices").textContent) || 0)} devices`;
    }
    document.getElementById("fleet-empty")?.remove();
    refreshTimes(row);
    subscribe();
    // The stale threshold is per profile; read it once rather than guess.
    getJSON(`/api/v1/devices/${encodeURIComponent(device.id)}`)
      .then((d) => { row.dataset.staleAfter = String(d.stale_after_s); })
      .catch(() => {});
  }

  async function resync() {
    const url = new URL(location.href);
    url.searchParams.set("fragment", "rows");
    const r = await fetch(url);
    if (!r.ok) return;
    const holder = document.createElement("table");
    holder.innerHTML = await r.text();
    tbody().replaceWith(holder.querySelector("tbody"));
    refreshTimes(table);
    subscribe();
  }

  live = new Live(
    {
      readings(frame) {
        for (const [device, metric, ts, value] of frame.data) {
          const row = rowOf(device);
          if (!row) continue;
          setValue(row, metric, ts, value);
          seen(row, ts);
        }
      },
      presence(frame) {
        const row = rowOf(frame.device);
        if (!row) return;
        setBadge(row.querySelector(".badge"), frame.state);
        const since = row.querySelector("time.since");
        since.dataset.us = String(frame.since);
        refreshTimes(row);
      },
      device(frame) { insertRow(frame.device); },
      stats(frame) {
        const s = frame.data;
        document.getElementById("count-devices").textContent = s.fleet.devices;
        document.getElementById("count-online").textContent = s.fleet.online;
        document.getElementById("rate-messages").textContent = s.ingest.messages_per_s;
        const dl = document.getElementById("dead-letters-hour");
        dl.textContent = s.ingest.dead_letters_last_hour;
        dl.classList.toggle("warn", s.ingest.dead_letters_last_hour > 0);
      },
    },
    resync,
  );
  subscribe();
  setInterval(() => {
    refreshTimes(table);
    for (const row of tbody().querySelectorAll("tr[data-device]")) refreshStale(row, row.querySelector(".badge"));
  }, 1000);
}

// ---- device page ------------------------------------------------------------------------------

const RANGES = { "1h": 3600, "24h": 86400, "7d": 7 * 86400 };
// Ranges up to this long draw raw readings (what was streamed is exactly what a reload draws);
// longer ones draw averages over ~NICE buckets from the series endpoint.
const RAW_MAX_S = 2 * 3600;
const TARGET_POINTS = 720;
const NICE_S = [1, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400];
const MAX_RAW_PAGES = 20;

function intervalFor(spanS) {
  const want = spanS / TARGET_POINTS;
  return NICE_S.find((s) => s >= want) || 86400;
}

async function devicePage() {
  const uPlot = (await import("./vendor/uplot/uPlot.esm.js")).default;
  const head = document.getElementById("device");
  const deviceId = head.dataset.device;
  const enc = encodeURIComponent(deviceId);
  const chartsEl = document.getElementById("charts");
  const note = document.getElementById("range-note");
  const charts = {}; // metric -> {x: [us], y: [], n: [], plot, el}
  window.fieldhub = { charts: {}, ready: false };
  let view = { range: "1h", startUs: 0, endUs: null, intervalUs: 0 }; // endUs null = follows now

  function exposed() {
    window.fieldhub.charts = Object.fromEntries(
      Object.entries(charts).map(([m, c]) => [m, { x: c.x, y: c.y }]),
    );
  }

  function figureFor(metric) {
    let el = chartsEl.querySelector(`[data-chart="${CSS.escape(metric)}"]`);
    if (!el) {
      document.getElementById("no-metrics")?.remove();
      el = document.createElement("figure");
      el.className = "chart";
      el.dataset.chart = metric;
      el.innerHTML = '<figcaption><span class="metric"></span> <span class="value"></span></figcaption><div class="plot"></div>';
      el.querySelector(".metric").textContent = metric;
      el.querySelector(".value").dataset.metric = metric;
      chartsEl.append(el);
    }
    return el;
  }

  function draw(metric) {
    const c = charts[metric];
    const data = [c.x.map((us) => us / US), c.y];
    if (c.plot) { c.plot.setData(data); return; }
    const box = c.el.querySelector(".plot");
    const css = getComputedStyle(document.body);
    c.plot = new uPlot(
      {
        width: Math.max(200, box.clientWidth),
        height: 200,
        legend: { show: false },
        cursor: { drag: { x: false, y: false } },
        scales: { x: { time: true } },
        axes: axes(css, 56),
        series: [{}, { label: metric, stroke: css.getPropertyValue("--accent"), width: 2, points: { show: false } }],
      },
      data,
      box,
    );
    new ResizeObserver(() => c.plot.setSize({ width: Math.max(200, box.clientWidth), height: 200 })).observe(box);
  }

  function chart(metric) {
    if (!charts[metric]) charts[metric] = { x: [], y: [], n: [], plot: null, el: figureFor(metric) };
    return charts[metric];
  }

  async function loadRaw(startUs, endUs) {
    const byMetric = {};
    let cursor = null;
    for (let i = 0; i < MAX_RAW_PAGES; i++) {
      const q = new URLSearchParams({ start: String(startUs), limit: "10000" });
      if (endUs) q.set("end", String(endUs));
      if (cursor) q.set("cursor", cursor);
      const page = await getJSON(`/api/v1/devices/${enc}/readings?${q}`);
      for (const r of page.data) {
        (byMetric[r.metric] ||= { x: [], y: [] });
        byMetric[r.metric].x.push(usOf(r.ts));
        byMetric[r.metric].y.push(r.value);
      }
      cursor = page.next_cursor;
      if (!cursor) return { byMetric, complete: true };
    }
    return { byMetric, complete: false };
  }

  async function loadSeries(metric, startUs, endUs, intervalS) {
    const q = new URLSearchParams({ metric, start: String(startUs), interval: `${intervalS}s`, agg: "avg" });
    if (endUs) q.set("end", String(endUs));
    const s = await getJSON(`/api/v1/devices/${enc}/series?${q}`);
    return { x: s.points.map((p) => usOf(p.ts)), y: s.points.map((p) => p.value), n: s.points.map((p) => p.count) };
  }

  async function loadTimeline() {
    const end = view.endUs ?? Date.now() * 1000;
    const q = new URLSearchParams({ start: String(view.startUs), end: String(end + 1) });
    const body = await getJSON(`/api/v1/devices/${enc}/presence?${q}`);
    timeline.events = body.data.map((e) => [usOf(e.ts), e.state]);
    timeline.draw();
  }

  const timeline = {
    events: [],
    draw() {
      const el = document.getElementById("timeline");
      const start = view.startUs;
      const end = view.endUs ?? Date.now() * 1000;
      el.replaceChildren();
      const evs = this.events.filter(([t]) => t < end);
      if (!evs.length) {
        el.innerHTML = '<span class="timeline-empty">no presence reported in this range</span>';
      }
      for (let i = 0; i < evs.length; i++) {
        const from = Math.max(evs[i][0], start);
        const to = i + 1 < evs.length ? evs[i + 1][0] : end;
        if (to <= from) continue;
        const seg = document.createElement("span");
        seg.className = "seg";
        seg.dataset.state = evs[i][1];
        seg.style.left = `${((from - start) / (end - start)) * 100}%`;
        seg.style.width = `${((to - from) / (end - start)) * 100}%`;
        seg.title = `${evs[i][1]} from ${isoOf(from)}`;
        el.append(seg);
      }
      document.getElementById("timeline-start").textContent = new Date(start / 1000).toLocaleString();
      document.getElementById("timeline-end").textContent = view.endUs ? new Date(end / 1000).toLocaleString() : "now";
    },
  };

  // Live readings that arrive while history loads are held and applied after it, so one
  // committed just after the history query is neither lost nor drawn twice.
  let loading = null;

  async function load() {
    const held = [];
    loading = held;
    try {
      await loadHistory();
    } finally {
      loading = null;
    }
    if (held.length) applyReadings(held);
  }

  async function loadHistory() {
    window.fieldhub.ready = false;
    const now = Date.now() * 1000;
    if (view.range !== "custom") {
      view.endUs = null;
      view.startUs = now - RANGES[view.range] * US;
    }
    const spanS = ((view.endUs ?? now) - view.startUs) / US;
    view.intervalUs = spanS <= RAW_MAX_S ? 0 : intervalFor(spanS) * US;
    const metrics = [...chartsEl.querySelectorAll("[data-chart]")].map((el) => el.dataset.chart);
    if (view.intervalUs === 0) {
      const { byMetric, complete } = await loadRaw(view.startUs, view.endUs);
      for (const m of new Set([...metrics, ...Object.keys(byMetric)])) {
        const c = chart(m);
        c.x = byMetric[m]?.x || [];
        c.y = byMetric[m]?.y || [];
        c.n = c.x.map(() => 1);
      }
      note.textContent = complete ? "raw readings" : "raw readings (first 200,000 only; narrow the range)";
    } else {
      await Promise.all(metrics.map(async (m) => {
        const s = await loadSeries(m, view.startUs, view.endUs, view.intervalUs / US);
        Object.assign(chart(m), s);
      }));
      note.textContent = `averages over ${view.intervalUs / US} s`;
    }
    for (const m of Object.keys(charts)) draw(m);
    exposed();
    await loadTimeline();
    window.fieldhub.ready = true;
  }

  // A live reading goes into the same chart: inserted in time order (a backfilled one may be
  // older), folded into its bucket's running mean when the view shows averages.
  function addPoint(metric, ts, value) {
    const now = Date.now() * 1000;
    if (view.endUs !== null && ts >= view.endUs) return;
    if (ts < view.startUs) return;
    const c = chart(metric);
    const key = view.intervalUs ? Math.floor(ts / view.intervalUs) * view.intervalUs : ts;
    let i = c.x.length;
    while (i > 0 && c.x[i - 1] > key) i--;
    if (i > 0 && c.x[i - 1] === key) {
      if (view.intervalUs) {
        const n = c.n[i - 1];
        c.y[i - 1] = (c.y[i - 1] * n + value) / (n + 1);
        c.n[i - 1] = n + 1;
      } else {
        c.y[i - 1] = value;
      }
    } else {
      c.x.splice(i, 0, key);
      c.y.splice(i, 0, value);
      c.n.splice(i, 0, 1);
    }
    if (view.endUs === null) {
      view.startUs = now - RANGES[view.range] * US;
      while (c.x.length && c.x[0] < view.startUs - view.intervalUs) { c.x.shift(); c.y.shift(); c.n.shift(); }
    }
  }

  function applyReadings(readings) {
    const touched = new Set();
    for (const [, metric, ts, value] of readings) {
      addPoint(metric, ts, value);
      showLatest(metric, ts, value);
      touched.add(metric);
      const seen = Math.min(ts, Date.now() * 1000);
      if (seen > Number(head.dataset.lastSeen)) {
        head.dataset.lastSeen = String(seen);
        document.getElementById("last-seen").dataset.us = String(seen);
      }
    }
    for (const m of touched) draw(m);
    if (touched.size) exposed();
  }

  function showLatest(metric, ts, value) {
    const cell = figureFor(metric).querySelector(".value");
    if (ts < Number(cell.dataset.ts || 0)) return;
    cell.dataset.ts = String(ts);
    cell.textContent = formatValue(value);
  }

  function setAttributes(patch) {
    const tbody = document.querySelector("#attributes tbody");
    for (const [key, value] of Object.entries(patch)) {
      let row = tbody.querySelector(`tr[data-key="${CSS.escape(key)}"]`);
      if (value === null) { row?.remove(); continue; }
      if (!row) {
        row = document.createElement("tr");
        row.dataset.key = key;
        row.innerHTML = "<th></th><td></td>";
        row.querySelector("th").textContent = key;
        const rows = [...tbody.children];
        tbody.insertBefore(row, rows.find((r) => r.dataset.key > key) || null);
      }
      row.querySelector("td").textContent = String(value);
    }
    document.getElementById("no-attributes")?.remove();
  }

  const presenceBadge = document.getElementById("presence");
  const commands = commandsPanel(deviceId);
  const live = new Live(
    {
      readings(frame) {
        const mine = frame.data.filter((r) => r[0] === deviceId);
        if (loading) loading.push(...mine);
        else applyReadings(mine);
      },
      presence(frame) {
        if (frame.device !== deviceId) return;
        setBadge(presenceBadge, frame.state);
        timeline.events.push([frame.since, frame.state]);
        timeline.draw();
      },
      attributes(frame) { if (frame.device === deviceId) setAttributes(frame.attributes); },
      command(frame) { commands.frame(frame); },
    },
    () => {
      commands.resync();
      return load();
    },
  );
  live.subscribe({ devices: [deviceId], events: ["readings", "presence", "devices", "commands"] });
  commands.start();

  const rangeForm = document.getElementById("ranges");
  rangeForm.addEventListener("click", (e) => {
    const button = e.target.closest("button[data-range]");
    if (!button) return;
    const range = button.dataset.range;
    if (range === "custom") {
      const start = Date.parse(rangeForm.start.value);
      const end = rangeForm.end.value ? Date.parse(rangeForm.end.value) : Date.now();
      if (!Number.isFinite(start) || !(start < end)) { note.textContent = "choose a start before the end"; return; }
      view = { range, startUs: start * 1000, endUs: rangeForm.end.value ? end * 1000 : null, intervalUs: 0 };
      if (view.endUs === null) { view.range = "custom"; }
    } else {
      view = { range, startUs: 0, endUs: null, intervalUs: 0 };
    }
    for (const b of rangeForm.querySelectorAll("button[data-range]")) b.setAttribute("aria-pressed", String(b === button));
    load().catch((err) => { note.textContent = String(err); });
  });

  setInterval(() => {
    refreshTimes();
    refreshStale(head, presenceBadge);
    timeline.draw();
  }, 1000);
  await load();
}

// ---- device page: commands --------------------------------------------------------------------

// docs/commands.md: a command only moves forward (pending -> sent -> one final state). What the
// page learns may arrive out of that order (the POST's answer after the command's own live
// frames, a list read just before a transition), so a row never goes back to an earlier state.
const COMMAND_RANK = { pending: 0, sent: 1, succeeded: 2, failed: 2, timed_out: 2, expired: 2, cancelled: 2 };
const COMMAND_ROWS = 20;

function commandsPanel(deviceId) {
  const enc = encodeURIComponent(deviceId);
  const typesEl = document.getElementById("command-types");
  const tbody = document.querySelector("#command-log tbody");
  const empty = document.getElementById("no-commands");
  const cancelError = document.getElementById("command-log-error");
  const rowOf = (id) => tbody.querySelector(`tr[data-command-id="${CSS.escape(id)}"]`);
  const rankOf = (state) => COMMAND_RANK[state] ?? 1; // an unknown state: after pending, before final

  function note(text, id) {
    const p = document.createElement("p");
    p.className = "empty";
    if (id) p.id = id;
    p.textContent = text;
    return p;
  }

  // One input per property of the command's params schema. Bounds go on the inputs as hints,
  // but the form does not validate: the API checks the params and its message says what is wrong.
  function fieldFor(name, schema, required) {
    const label = document.createElement("label");
    label.className = "param";
    const caption = document.createElement("span");
    caption.textContent = name;
    const type = Array.isArray(schema.type) ? schema.type.find((t) => t !== "null") : schema.type;
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
      label.classList.add("check");
    } else if (type === "integer" || type === "number") {
      input = document.createElement("input");
      input.type = "number";
      input.dataset.kind = type;
      input.step = type === "integer" ? "1" : "any";
      const lo = schema.minimum ?? schema.exclusiveMinimum;
      const hi = schema.maximum ?? schema.exclusiveMaximum;
      if (typeof schema.minimum === "number") input.min = String(schema.minimum);
      if (typeof schema.maximum === "number") input.max = String(schema.maximum);
      if (typeof lo === "number" || typeof hi === "number") input.placeholder = `${lo ?? ""}–${hi ?? ""}`;
      if (typeof schema.default === "number") input.value = String(schema.default);
    } else {
      input = document.createElement("input");
      input.type = "text";
      // A string as typed; anything else (objects, arrays, untyped) is read as JSON.
      input.dataset.kind = type === "string" ? "string" : "json";
      if (input.dataset.kind === "json") input.placeholder = "JSON";
      if (typeof schema.maxLength === "number") input.maxLength = schema.maxLength;
      if (schema.default !== undefined) input.value = type === "string" ? String(schema.default) : JSON.stringify(schema.default);
    }
    input.name = name;
    input.dataset.param = name;
    if (required) input.setAttribute("aria-required", "true");
    if (schema.description) input.title = schema.description;
    if (input.type === "checkbox") label.append(input, caption);
    else label.append(caption, input);
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

  async function send(form, name) {
    const button = form.querySelector("button[type=submit]");
    showError(form, "");
    button.disabled = true;
    form.setAttribute("aria-busy", "true");
    try {
      const r = await fetch(`/api/v1/devices/${enc}/commands`, {
        method: "POST",
        headers: { "content-type": "application/json", accept: "application/json" },
        body: JSON.stringify({ name, params: readParams(form) }),
      });
      let body = null;
      try { body = await r.json(); } catch { /* not JSON: reported by status below */ }
      if (r.ok && body?.id) {
        // Drawn at once, in this task: the command's first state is always on screen, even
        // when its live frames have already moved on (they then win; see upsert).
        upsert(body);
        return;
      }
      let message = body?.error?.message || `HTTP ${r.status} ${r.statusText}`.trim();
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

  function formFor(command) {
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
      if (!button.disabled) send(form, command.name);
    });
    return form;
  }

  function renderTypes(body) {
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
    typesEl.replaceChildren(format, ...commands.map(formFor));
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

  // A pending command can still be cancelled: its row offers a button until it leaves pending,
  // whichever says so first (the DELETE's answer, a live frame, a resync).
  function syncCancel(row, cmd) {
    const cell = row.querySelector("td.actions");
    const button = cell.querySelector("button.cancel");
    if (cmd.state !== "pending") {
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

  function showCancelError(message) {
    cancelError.textContent = message;
    cancelError.hidden = !message;
  }

  // DELETE answers 200 with the command, now cancelled, or 409 once it was handed to the broker
  // or is final (docs/commands.md): then the API's message is shown and the row re-read.
  async function cancel(row, button) {
    const id = row.dataset.commandId;
    const name = row.querySelector("td.name code").textContent;
    const url = `/api/v1/devices/${enc}/commands/${encodeURIComponent(id)}`;
    showCancelError("");
    button.disabled = true;
    row.setAttribute("aria-busy", "true");
    try {
      const r = await fetch(url, { method: "DELETE", headers: { accept: "application/json" } });
      let body = null;
      try { body = await r.json(); } catch { /* not JSON: reported by status below */ }
      if (r.ok && body?.id) {
        upsert(body); // never backwards: a live frame that came first stays
        return;
      }
      const message = body?.error?.message || `HTTP ${r.status} ${r.statusText}`.trim();
      showCancelError(`Could not cancel ${name}: ${message}`);
      if (r.status === 409) {
        // The command moved on; its live frame may not have arrived yet (or the socket is down).
        getJSON(url).then((cmd) => upsert(cmd), () => {});
      }
    } catch (err) {
      showCancelError(`Could not cancel ${name}: ${err.message || err}`);
    } finally {
      button.disabled = false;
      row.removeAttribute("aria-busy");
    }
  }

  tbody.addEventListener("click", (e) => {
    const button = e.target.closest("button.cancel");
    const row = button?.closest("tr[data-command-id]");
    if (row && !button.disabled) cancel(row, button);
  });

  // Insert the command or bring its row up to date; rows stay newest first (by `created`).
  function upsert(cmd, transition) {
    let row = rowOf(cmd.id);
    if (row) {
      if (rankOf(cmd.state) < rankOf(row.querySelector("td.state").dataset.state)) return;
      fillRow(row, cmd, transition);
      return;
    }
    row = document.getElementById("command-row").content.firstElementChild.cloneNode(true);
    row.dataset.commandId = cmd.id;
    const created = cmd.created ? usOf(cmd.created) : Date.now() * 1000;
    row.dataset.created = String(created);
    row.querySelector("td.created time").dataset.us = String(created);
    row.querySelector("td.name code").textContent = cmd.name;
    const params = cmd.params && Object.keys(cmd.params).length ? JSON.stringify(cmd.params) : "";
    row.querySelector("td.params code").textContent = params;
    fillRow(row, cmd, transition);
    const before = [...tbody.children].find((r) => Number(r.dataset.created) < created);
    row.classList.add("new");
    refreshTimes(row);
    tbody.insertBefore(row, before || null);
    while (tbody.children.length > COMMAND_ROWS) tbody.lastElementChild.remove();
    empty.hidden = true;
  }

  async function loadTypes() {
    try {
      renderTypes(await getJSON(`/api/v1/devices/${enc}/command-types`));
    } catch (err) {
      typesEl.replaceChildren(note(`Could not read the commands of this device: ${err.message}`));
    }
  }

  async function loadLog() {
    try {
      const body = await getJSON(`/api/v1/devices/${enc}/commands?limit=${COMMAND_ROWS}`);
      for (const cmd of [...body.data].reverse()) upsert(cmd);
      empty.textContent = "No commands sent to this device yet.";
    } catch (err) {
      empty.textContent = `Could not read the commands of this device: ${err.message}`;
    }
    empty.hidden = tbody.children.length > 0;
  }

  empty.hidden = true;
  return {
    start() { loadTypes(); loadLog(); },
    resync: loadLog,
    frame(frame) {
      const cmd = frame.command;
      if (!cmd || (cmd.device && cmd.device !== deviceId)) return;
      upsert(cmd, cmd.transition);
    },
  };
}

// ---- dead letters page ------------------------------------------------------------------------

function deadLettersPage() {
  const table = document.getElementById("dead-letters");
  const wanted = table.dataset.reason;
  const device = table.dataset.device;
  const suppressedNote = document.getElementById("suppressed");
  let suppressed = 0;
  const live = new Live(
    {
      dead_letters(frame) {
        if (table.dataset.live !== "1") return;
        const tbody = table.querySelector("tbody");
        for (const item of frame.items) {
          if (wanted && item.reason !== wanted) continue;
          const row = document.getElementById("dl-row").content.firstElementChild.cloneNode(true);
          row.querySelector("td.received time").dataset.us = String(item.received);
          row.querySelector("td.reason .tag").textContent = item.reason;
          row.querySelector("td.reason .detail").textContent = item.detail;
          row.querySelector("td.topic code").textContent = item.topic;
          if (item.device) {
            const a = document.createElement("a");
            a.href = `/dead-letters?device=${encodeURIComponent(item.device)}`;
            a.title = "Dead letters of this device";
            a.textContent = item.device;
            row.querySelector("td.device").append(a);
          }
          row.querySelector("td.payload code").textContent = item.preview;
          row.querySelector("td.payload .size").textContent = `${item.size} B`;
          row.classList.add("new");
          tbody.prepend(row);
          refreshTimes(row);
        }
        document.getElementById("dl-empty")?.remove();
        if (frame.suppressed) {
          suppressed += frame.suppressed;
          suppressedNote.hidden = false;
          suppressedNote.textContent = `${suppressed} more arrived too fast to list live; reload to see them`;
        }
      },
    },
    null,
  );
  live.subscribe({ devices: device ? [device] : null, events: ["dead_letters"] });
  setInterval(() => refreshTimes(table), 1000);
}

// ---- system page ------------------------------------------------------------------------------

async function systemPage() {
  const uPlot = (await import("./vendor/uplot/uPlot.esm.js")).default;
  const box = document.getElementById("rate-chart");
  const css = getComputedStyle(document.body);
  const xs = [];
  const ys = [];
  const plot = new uPlot(
    {
      width: Math.max(200, box.clientWidth),
      height: 180,
      legend: { show: false },
      // A fixed five-minute window, so the first samples do not stretch across the whole width.
      scales: { x: { time: true, range: (u, min, max) => [max - 300, max] } },
      axes: axes(css, 56),
      series: [{}, { label: "messages/s", stroke: css.getPropertyValue("--accent"), width: 2, points: { show: false } }],
    },
    [xs, ys],
    box,
  );
  new ResizeObserver(() => plot.setSize({ width: Math.max(200, box.clientWidth), height: 180 })).observe(box);
  const live = new Live(
    {
      stats(frame) {
        const s = frame.data;
        for (const el of document.querySelectorAll("[data-stat]")) {
          const value = el.dataset.stat.split(".").reduce((o, k) => (o == null ? o : o[k]), s);
          if (el.dataset.bool) {
            const [yes, no] = el.dataset.bool.split(",");
            el.textContent = value == null ? "—" : value ? yes : no;
            el.dataset.state = value == null ? "" : value ? "ok" : "bad";
          } else {
            el.textContent = value == null ? "—" : String(value);
          }
        }
        xs.push(s.time_us / US);
        ys.push(s.ingest.messages_per_s);
        while (xs.length > 300) { xs.shift(); ys.shift(); }
        plot.setData([xs, ys]);
      },
    },
    null,
  );
  live.subscribe({ devices: [], events: ["stats"] });
}

// ---- start --------------------------------------------------------------------------------------

const pages = { fleet: fleetPage, device: devicePage, "dead-letters": deadLettersPage, system: systemPage };
refreshTimes();
pages[page]?.();
