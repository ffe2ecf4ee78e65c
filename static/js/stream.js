// One WebSocket to /ws/v1 (docs/websocket.md): subscribes to channels, answers the server's
// pings, hands frames to handlers by channel, and reconnects (then resubscribes) with backoff.
// A browser is authenticated by its session cookie, so `orders` needs no login op.

export class Stream {
  constructor(channels, { depth = 50, onFrame, onState }) {
    this.channels = new Set(channels);
    this.depth = depth;
    this.onFrame = onFrame;
    this.onState = onState || (() => {});
    this.backoffMs = 500;
    this.socket = null;
    this.connect();
  }

  connect() {
    const scheme = window.location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${window.location.host}/ws/v1`);
    this.socket = socket;
    this.onState("connecting");
    socket.addEventListener("open", () => {
      this.backoffMs = 500;
      this.onState("live");
      this.send({ op: "subscribe", channels: [...this.channels], depth: this.depth });
    });
    socket.addEventListener("message", (event) => {
      const frame = JSON.parse(event.data);
      if (frame.type === "ping") {
        this.send({ op: "pong", id: frame.id });
        return;
      }
      this.onFrame(frame);
    });
    socket.addEventListener("close", () => {
      if (this.socket !== socket) return;
      this.onState("reconnecting");
      setTimeout(() => this.connect(), this.backoffMs);
      this.backoffMs = Math.min(this.backoffMs * 2, 10000);
    });
  }

  send(op) {
    if (this.socket && this.socket.readyState === WebSocket.OPEN) {
      this.socket.send(JSON.stringify(op));
    }
  }

  // A fresh snapshot of one channel: unsubscribe, then subscribe again (frames of the old
  // subscription still in flight are dropped by the caller until the new snapshot arrives).
  resubscribe(channel) {
    this.send({ op: "unsubscribe", channels: [channel] });
    this.send({ op: "subscribe", channels: [channel], depth: this.depth });
  }
}
