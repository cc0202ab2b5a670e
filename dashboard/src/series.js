// History from GET /api/kpis/{kpi}/series, held as columns for uPlot, and kept moving:
// on updates only the newest steps are re-read and merged in, not the whole range.
import { api, kpiPath, qs } from "./api.js";

export async function fetchSeries(kpi, measure, { since, step, compare = false, zeroGaps = false }) {
  const r = await api(kpiPath(kpi, `series?${qs({ measure, since, step, compare: compare || undefined })}`));
  const xs = [];
  const ys = [];
  const week = [];
  // A sum over a step without rows is NULL in kpi.series, and means 0.
  const val = zeroGaps ? (v) => num(v) ?? 0 : num;
  for (const p of r.points) {
    xs.push(Date.parse(p.bucket) / 1000);
    ys.push(val(p.value));
    week.push(compare ? val(p.week_ago) : null);
  }
  return { xs, ys, week };
}

const num = (v) => (v === null || v === undefined ? null : Number(v));

/** A series over a sliding range of `spanSecs`, stepped by `stepSecs`. */
export class Series {
  constructor(spec, { spanSecs, stepSecs, compare = false, align = 0 }) {
    const { kpi, measure } = spec;
    const zeroGaps = spec.kind === "sum";
    Object.assign(this, { kpi, measure, spanSecs, stepSecs, compare, align, zeroGaps });
    this.xs = [];
    this.ys = [];
    this.week = [];
  }

  step() {
    return `${this.stepSecs} seconds`;
  }

  /** Reads the whole range. `align` (seconds) starts it at a whole step, e.g. an hour. */
  async load() {
    const now = Date.now() / 1000;
    let from = now - this.spanSecs;
    if (this.align) from = Math.floor(now / this.align) * this.align - (this.spanSecs - this.align);
    const s = await fetchSeries(this.kpi, this.measure, {
      since: new Date(from * 1000).toISOString(),
      step: this.step(),
      compare: this.compare,
      zeroGaps: this.zeroGaps,
    });
    Object.assign(this, s);
  }

  /** Re-reads from the newest step on and merges it in; rolls the range forward. */
  async refreshTail() {
    if (!this.xs.length) return this.load();
    const last = this.xs[this.xs.length - 1];
    const s = await fetchSeries(this.kpi, this.measure, {
      since: new Date(last * 1000).toISOString(),
      step: this.step(),
      compare: this.compare,
      zeroGaps: this.zeroGaps,
    });
    for (let i = 0; i < s.xs.length; i++) {
      const at = this.xs.lastIndexOf(s.xs[i]);
      if (at >= 0) {
        this.ys[at] = s.ys[i];
        this.week[at] = s.week[i];
      } else if (s.xs[i] > this.xs[this.xs.length - 1]) {
        this.xs.push(s.xs[i]);
        this.ys.push(s.ys[i]);
        this.week.push(s.week[i]);
      }
    }
    const keep = this.xs.length - Math.ceil(this.spanSecs / this.stepSecs);
    if (keep > 0) {
      this.xs.splice(0, keep);
      this.ys.splice(0, keep);
      this.week.splice(0, keep);
    }
  }

  data() {
    return this.compare ? [this.xs, this.ys, this.week] : [this.xs, this.ys];
  }
}

/** The smallest multiple of the KPI's bucket that is at least `want` seconds. */
export function stepFor(bucketSecs, want) {
  return Math.max(1, Math.ceil(want / bucketSecs)) * bucketSecs;
}
