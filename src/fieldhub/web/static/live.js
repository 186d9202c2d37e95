// The page's live connection: one WebSocket to /api/v1/live (docs/live.md).
//
// `new Live(handlers, onResync)` connects at once; `handlers[frame.type](frame)` receives each
// frame. The connection reconnects with backoff and, after a gap or a `lagged` frame, asks the
// page to re-read its state over HTTP (onResync) so nothing shown is stale after a hiccup.
// body[data-live] says "connecting", "connected" (subscription confirmed) or "disconnected".

const FIRST_DELAY_MS = 500;
const MAX_DELAY_MS = 10000;

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
    ws.onopen = () => this.opened(ws);
    ws.onmessage = (e) => this.receive(JSON.parse(e.data));
    ws.onclose = () => this.closed();
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

  closed() {
    document.body.dataset.live = "disconnected";
    setTimeout(() => this.connect(), this.delay);
    this.delay = Math.min(this.delay * 2, MAX_DELAY_MS);
  }
}
