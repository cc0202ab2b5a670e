// What every widget shares: its box, its KPI's state (live, gone, refused, a config
// mistake) and the throttled refresh that updates of its KPI trigger.
import { schedule, throttle } from "./frame.js";
import { intervalSeconds } from "./format.js";

let nextId = 0;

/** Every re-fetch an update triggers waits at least this long after the last one. */
export const REFRESH_MS = 1000;

export class Widget {
  constructor(spec, kind) {
    this.spec = spec;
    this.id = `${kind}-${nextId++}`;
    this.el = document.createElement("div");
    this.el.className = `widget ${kind}`;
    this.el.dataset.kpi = spec.kpi;
    this.el.dataset.measure = spec.measure;
    this.el.id = this.id;
    this.problem = spec.problem || null;
    this.started = false;
    this.refresh = throttle(() => this.reload(false), REFRESH_MS);
  }

  /** A new value of the KPI: `data` is its kpi.snapshot. */
  snapshot(data) {
    if (this.gone) {
      this.gone = null;
      this.el.classList.remove("gone");
    }
    const m = data.measures && data.measures[this.spec.measure];
    if (!m) {
      this.setProblem(`KPI "${this.spec.kpi}" has no measure "${this.spec.measure}"`);
      return;
    }
    this.bucketSecs = intervalSeconds(data.bucket);
    this.onSnapshot(data, m);
    if (!this.started) {
      this.started = true;
      this.reload(true).catch((e) => this.setProblem(e.message));
    } else {
      this.refresh();
    }
  }

  /** Re-reads history after a reconnect: updates may have been missed. */
  resync() {
    if (this.started) this.reload(true).catch((e) => this.setProblem(e.message));
  }

  setProblem(message) {
    this.problem = message;
    this.draw();
  }

  /** The KPI was dropped (or is refused): say so instead of showing a frozen number. */
  setGone(reason) {
    this.gone = reason;
    this.el.classList.add("gone");
    this.draw();
  }

  draw() {
    schedule(this.id, () => this.render());
  }

  // Subclasses: onSnapshot(data, measure), reload(full), render().
  onSnapshot() {}
  async reload() {}
  render() {}
}

/** A small element with a class and text. */
export function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}
