// The device page's presence timeline: one coloured segment per presence state in the view.

import { isoOf, nowUs, usOf } from "./format.js";
import { getJSON } from "./http.js";

export class Timeline {
  constructor(el, startLabel, endLabel) {
    this.el = el;
    this.startLabel = startLabel;
    this.endLabel = endLabel;
    this.events = []; // [[since us, state]], oldest first
  }

  // The presence changes in the view, and the state it opens in.
  async load(enc, view) {
    const end = view.endUs ?? nowUs();
    const q = new URLSearchParams({ start: String(view.startUs), end: String(end + 1) });
    const body = await getJSON(`/api/v1/devices/${enc}/presence?${q}`);
    this.events = body.data.map((e) => [usOf(e.ts), e.state]);
    this.draw(view);
  }

  add(since, state) {
    this.events.push([since, state]);
  }

  draw(view) {
    const start = view.startUs;
    const end = view.endUs ?? nowUs();
    this.el.replaceChildren();
    const evs = this.events.filter(([t]) => t < end);
    if (!evs.length) {
      this.el.innerHTML = '<span class="timeline-empty">no presence reported in this range</span>';
    }
    for (let i = 0; i < evs.length; i++) {
      const from = Math.max(evs[i][0], start);
      const to = i + 1 < evs.length ? evs[i + 1][0] : end;
      if (to > from) this.el.append(segment(evs[i][1], from, to, start, end));
    }
    this.startLabel.textContent = new Date(start / 1000).toLocaleString();
    this.endLabel.textContent = view.endUs ? new Date(end / 1000).toLocaleString() : "now";
  }
}

function segment(state, from, to, start, end) {
  const seg = document.createElement("span");
  seg.className = "seg";
  seg.dataset.state = state;
  seg.style.left = `${((from - start) / (end - start)) * 100}%`;
  seg.style.width = `${((to - from) / (end - start)) * 100}%`;
  seg.title = `${state} from ${isoOf(from)}`;
  return seg;
}
