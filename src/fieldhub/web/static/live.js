// The page's live connection: one WebSocket to /api/v1/live (docs/live.md).
//
// `new Live(handlers, onResync)` connects at once; `handlers[frame.type](frame)` receives each
// frame. The connection reconnects with backoff and, after a gap or a `lagged` frame, asks the
// page to re-read its state over HTTP (onResync) so nothing shown is stale after a hiccup.
// body[data-live] says "connecting", "connected" (subscription confirmed) or "disconnected".

import { getJSON } from "./http.js";

const FIRST_DELAY_MS = 500;
const MAX_DELAY_MS = 10000;
// The server closes the socket with this code when its credentials stop checking (the session
// ended or the user was disabled), and refuses a handshake without them (which the browser
// reports as 1006, like any other failed connection).
const POLICY_VIOLATION = 1008;

export class Live {
  constructor(handlers, onResync) {
    this.handlers = handlers;
    this.onResync = onResync;
    this.subscription = null;
    this.delay = FIRST_DELAY_MS;
    this.connectedOnce = false;
    this.resyncWhenSubscribed = false;
    this.connect();
  }

  // Replace the subscription (sent now if connected, else on connect).
  subscribe(sub) {
    this.subscription = { op: "subscribe", ...sub };
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(this.subscription));
  }

  connect() {
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${proto}//${location.host}/api/v1/live`);
    this.ws = ws;
    document.body.dataset.live = "connecting";
    let wasOpen = false;
    ws.onopen = () => {
      wasOpen = true;
      this.opened(ws);
    };
    ws.onmessage = (e) => this.receive(JSON.parse(e.data));
    ws.onclose = (e) => this.closed(e, wasOpen);
  }

  opened(ws) {
    this.delay = FIRST_DELAY_MS;
    // After a reconnect, what happened while we were away is read back over HTTP once the
    // new subscription is in place (a re-subscribe on an open socket needs no resync).
    this.resyncWhenSubscribed = this.connectedOnce;
    this.connectedOnce = true;
    if (this.subscription) ws.send(JSON.stringify(this.subscription));
  }

  receive(frame) {
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
  }

  closed(e, wasOpen) {
    document.body.dataset.live = "disconnected";
    // The socket uses the page's session cookie (same origin). When the server shut it for its
    // credentials, or would not open it, ask the API who we are: a 401 means the session has
    // ended, and getJSON takes the page to the login page; anything else, reconnect as usual.
    if (e.code === POLICY_VIOLATION || !wasOpen) getJSON("/api/v1/auth/me").catch(() => {});
    setTimeout(() => this.connect(), this.delay);
    this.delay = Math.min(this.delay * 2, MAX_DELAY_MS);
  }
}
