// The WebSocket to the notifier: subscribes to the dashboard's KPIs and the alerts
// topic, resumes from the versions it has (`since`) after a reconnect, and reconnects
// with exponential backoff and jitter. A refused token (close 4001) ends it.
import { token, tokenRefused } from "./token.js";

const MIN_DELAY_MS = 500;
const MAX_DELAY_MS = 30_000;

export class Connection {
  constructor(kpis, handlers) {
    this.kpis = kpis;
    this.h = handlers;
    this.versions = {};
    this.alertsSince = null;
    this.attempt = 0;
    this.stopped = false;
    this.opened = false;
  }

  start() {
    this.connect();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.ws) this.ws.close(1000);
  }

  connect() {
    const t = token();
    const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws${t ? `?token=${encodeURIComponent(t)}` : ""}`;
    this.h.state(this.attempt ? "reconnecting" : "connecting");
    const ws = new WebSocket(url);
    this.ws = ws;
    ws.onopen = () => {
      const resumed = this.opened;
      this.opened = true;
      this.attempt = 0;
      const since = {};
      for (const k of this.kpis) if (k in this.versions) since[k] = this.versions[k];
      if (this.kpis.length) ws.send(JSON.stringify({ op: "subscribe", kpis: this.kpis, since }));
      const alerts = { op: "subscribe_alerts" };
      if (this.alertsSince !== null) alerts.since = this.alertsSince;
      ws.send(JSON.stringify(alerts));
      this.h.state("live");
      if (resumed) this.h.resync();
    };
    ws.onmessage = (ev) => {
      let m;
      try {
        m = JSON.parse(ev.data);
      } catch {
        return;
      }
      switch (m.type) {
        case "snapshot":
        case "update":
          if (m.dims) return;
          this.versions[m.kpi] = m.version;
          this.h.value(m.kpi, m.data);
          break;
        case "error":
          this.h.error(m);
          break;
        case "alerts":
          this.alertsSince = m.since;
          this.h.alerts();
          break;
        case "alert":
          this.alertsSince = m.id;
          this.h.alerts();
          break;
      }
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws || this.stopped) return;
      if (ev.code === 4001) {
        this.stopped = true;
        this.h.state("refused");
        tokenRefused(ev.reason);
        return;
      }
      const delay = Math.min(MAX_DELAY_MS, MIN_DELAY_MS * 2 ** this.attempt) * (0.75 + Math.random() * 0.5);
      this.attempt++;
      this.h.state("reconnecting", Math.round(delay / 1000));
      this.timer = setTimeout(() => this.connect(), delay);
    };
  }
}
