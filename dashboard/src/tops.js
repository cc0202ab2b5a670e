// A top-N table by a dimension (kpi.top), re-read after updates so it re-ranks live.
import { api, kpiPath, qs } from "./api.js";
import { Widget, el } from "./widget.js";
import { formatter, show } from "./format.js";

export class Top extends Widget {
  constructor(spec) {
    super(spec, "top");
    this.fmt = formatter(spec.format, spec.currency);
    this.el.dataset.dimension = spec.dimension;
    this.el.append(el("h2", "", spec.label));
    this.table = el("table", "toplist");
    this.body = el("tbody");
    this.table.append(this.body);
    this.note = el("div", "note", "");
    this.el.append(this.table, this.note);
    this.rows = [];
    if (this.problem) this.draw();
  }

  async reload() {
    const { measure, dimension, window, limit } = this.spec;
    const r = await api(kpiPath(this.spec.kpi, `top?${qs({ measure, dimension, window, limit })}`));
    this.rows = r.rows;
    this.draw();
  }

  render() {
    this.note.textContent = this.gone || this.problem || (this.rows.length ? "" : "no data yet");
    if (this.gone || this.problem) {
      this.body.replaceChildren();
      return;
    }
    const max = Math.max(...this.rows.map((r) => Number(r.value) || 0), 0);
    const trs = this.rows.map((r, i) => {
      const tr = el("tr");
      tr.dataset.key = r.dimension_value ?? "";
      const bar = el("td", "bar");
      const fill = el("span");
      fill.style.width = max > 0 ? `${(100 * Number(r.value)) / max}%` : "0";
      bar.append(fill);
      const value = el("td", "num", show(this.fmt, r.value === null ? null : Number(r.value)));
      value.dataset.value = r.value === null ? "" : String(r.value);
      tr.append(el("td", "rank", String(i + 1)), el("td", "name", r.dimension_value ?? "(none)"), bar, value);
      return tr;
    });
    this.body.replaceChildren(...trs);
  }
}
