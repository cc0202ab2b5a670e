// A time series per chosen measure, with a 1 h / 24 h / 7 d range picker and the same
// range a week earlier drawn behind it (kpi.series with compare => true).
import uPlot from "uplot";
import { Widget, el } from "./widget.js";
import { formatter } from "./format.js";
import { Series, stepFor } from "./series.js";
import { axes, plotSize } from "./plot.js";

// Range → (span, wanted step): about 60–170 points each.
const RANGES = { "1h": [3600, 60], "24h": [86400, 900], "7d": [7 * 86400, 3600] };

export class Chart extends Widget {
  constructor(spec) {
    super(spec, "chart");
    this.fmt = formatter(spec.format, spec.currency);
    this.range = "1h";
    const head = el("div", "head");
    head.append(el("h2", "", spec.label));
    this.picker = el("div", "picker");
    for (const r of Object.keys(RANGES)) {
      const b = el("button", r === this.range ? "on" : "", r.replace("h", " h").replace("d", " d"));
      b.dataset.range = r;
      b.addEventListener("click", () => this.pick(r));
      this.picker.append(b);
    }
    head.append(this.picker);
    this.box = el("div", "plot");
    this.note = el("div", "note", "");
    this.el.append(head, this.box, this.note);
    if (this.problem) this.draw();
  }

  pick(range) {
    if (range === this.range) return;
    this.range = range;
    for (const b of this.picker.children) b.className = b.dataset.range === range ? "on" : "";
    this.el.dataset.range = range;
    this.reload(true).catch((e) => this.setProblem(e.message));
  }

  async reload(full) {
    const [span, want] = RANGES[this.range];
    if (full || !this.series || this.series.spanSecs !== span) {
      const s = new Series(this.spec, {
        spanSecs: span,
        stepSecs: stepFor(this.bucketSecs, want),
        compare: true,
      });
      await s.load();
      this.series = s;
      if (this.plot) {
        this.plot.destroy();
        this.plot = null;
      }
    } else {
      await this.series.refreshTail();
    }
    this.draw();
  }

  render() {
    this.note.textContent = this.gone || this.problem || "";
    if (this.gone || this.problem || !this.series) return;
    const data = this.series.data();
    this.el.dataset.points = String(data[0].length);
    if (!this.plot) {
      this.plot = new uPlot(
        {
          ...plotSize(this.box, 200),
          scales: { x: { time: true } },
          axes: axes(this.fmt),
          legend: { live: false },
          series: [
            {},
            { label: "now", stroke: "#2563eb", width: 2, fill: "rgba(37,99,235,0.08)", points: { show: false }, spanGaps: true, value: (u, v) => (v === null ? "—" : this.fmt(v)) },
            { label: "a week ago", stroke: "#94a3b8", width: 1.5, dash: [6, 4], points: { show: false }, spanGaps: true, value: (u, v) => (v === null ? "—" : this.fmt(v)) },
          ],
        },
        data,
        this.box,
      );
    } else {
      this.plot.setData(data);
    }
  }

  resize() {
    if (this.plot) this.plot.setSize(plotSize(this.box, 200));
  }
}
