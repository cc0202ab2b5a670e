// Bars per hour for the last 24 hours; the current hour's bar grows with every update.
import uPlot from "uplot";
import { Widget, el } from "./widget.js";
import { formatter, show } from "./format.js";
import { Series, stepFor } from "./series.js";
import { axes, bars, plotSize } from "./plot.js";

const HOUR = 3600;

export class Hourly extends Widget {
  constructor(spec) {
    super(spec, "hourly");
    this.fmt = formatter(spec.format, spec.currency);
    this.head = el("div", "head");
    this.title = el("h2", "", spec.label);
    this.now = el("span", "now", "");
    this.head.append(this.title, this.now);
    this.box = el("div", "plot");
    this.note = el("div", "note", "");
    this.el.append(this.head, this.box, this.note);
    if (this.problem) this.draw();
  }

  async reload(full) {
    const step = stepFor(this.bucketSecs, HOUR);
    const hourNow = Math.floor(Date.now() / 1000 / step) * step;
    const rolled = this.series && this.series.xs.length && this.series.xs[this.series.xs.length - 1] < hourNow;
    if (full || !this.series || rolled) {
      this.series = new Series(this.spec, { spanSecs: 24 * step, stepSecs: step, align: step });
      await this.series.load();
    } else {
      await this.series.refreshTail();
    }
    this.draw();
  }

  render() {
    this.note.textContent = this.gone || this.problem || "";
    if (this.gone || this.problem || !this.series) return;
    const data = this.series.data();
    const newest = data[1][data[1].length - 1];
    this.now.textContent = `this hour: ${show(this.fmt, newest)}`;
    this.el.dataset.newest = newest === null || newest === undefined ? "" : String(newest);
    this.el.dataset.points = String(data[0].length);
    this.el.dataset.tail = data[1].slice(-2).join(",");
    if (!this.plot) {
      this.plot = new uPlot(
        {
          ...plotSize(this.box, 180),
          legend: { show: false },
          scales: { x: { time: true } },
          axes: axes(this.fmt),
          series: [{}, { label: this.spec.label, fill: "rgba(16,185,129,0.55)", stroke: "#059669", paths: bars, points: { show: false } }],
        },
        data,
        this.box,
      );
    } else {
      this.plot.setData(data);
    }
  }

  resize() {
    if (this.plot) this.plot.setSize(plotSize(this.box, 180));
  }
}
