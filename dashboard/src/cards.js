// The top row: a card per headline measure with the value over the snapshot's window
// (the last hour), its change against the same hour a week ago, the colour of its KPI's
// alerts, and a 60-minute sparkline whose newest point moves.
import uPlot from "uplot";
import { Widget, el } from "./widget.js";
import { change, formatter, show, showChange } from "./format.js";
import { Series, stepFor } from "./series.js";

export class Card extends Widget {
  constructor(spec) {
    super(spec, "card");
    this.fmt = formatter(spec.format, spec.currency);
    this.label = el("div", "label", spec.label);
    this.value = el("div", "value", "…");
    this.change = el("div", "change", "");
    this.note = el("div", "note", "");
    this.spark = el("div", "spark");
    this.el.append(this.label, this.value, this.change, this.spark, this.note);
    this.alert = "none";
    this.current = undefined;
    if (this.problem) this.draw();
  }

  onSnapshot(data, m) {
    this.el.dataset.version = String(data.version);
    this.current = m.window;
    this.weekAgo = m.window_week_ago;
    this.draw();
  }

  setAlert(state) {
    if (state === this.alert) return;
    this.alert = state;
    this.draw();
  }

  async reload(full) {
    if (full || !this.series) {
      this.series = new Series(this.spec, {
        spanSecs: 3600,
        stepSecs: stepFor(this.bucketSecs, 60),
      });
      await this.series.load();
    } else {
      await this.series.refreshTail();
    }
    this.draw();
  }

  render() {
    this.el.dataset.alert = this.alert;
    if (this.gone) {
      this.value.textContent = "—";
      this.value.dataset.value = "";
      this.change.textContent = "";
      this.note.textContent = this.gone;
      this.el.dataset.state = "gone";
      return;
    }
    if (this.problem) {
      this.value.textContent = "—";
      this.note.textContent = this.problem;
      this.el.dataset.state = "problem";
      return;
    }
    if (this.current === undefined) return;
    this.el.dataset.state = "live";
    this.note.textContent = "";
    this.value.textContent = show(this.fmt, this.current);
    this.value.dataset.value = this.current === null ? "" : String(this.current);
    const c = showChange(change(this.current, this.weekAgo));
    this.change.textContent = `${c.arrow} ${c.text}`.trim();
    this.change.dataset.dir = c.dir;
    if (this.series) this.drawSpark();
  }

  drawSpark() {
    const data = this.series.data();
    const width = Math.max(120, this.spark.clientWidth || 200);
    if (!this.plot) {
      this.plot = new uPlot(
        {
          width,
          height: 44,
          legend: { show: false },
          cursor: { show: false },
          select: { show: false },
          axes: [{ show: false }, { show: false }],
          scales: { x: { time: true } },
          series: [{}, { stroke: "#3b82f6", fill: "rgba(59,130,246,0.15)", width: 1.5, points: { show: false }, spanGaps: true }],
        },
        data,
        this.spark,
      );
    } else {
      this.plot.setData(data);
    }
    this.el.dataset.points = String(data[0].length);
    this.el.dataset.newest = String(data[1][data[1].length - 1] ?? "");
    this.el.dataset.tail = data[1].slice(-3).join(",");
  }

  resize() {
    if (this.plot) this.plot.setSize({ width: Math.max(120, this.spark.clientWidth || 200), height: 44 });
  }
}
