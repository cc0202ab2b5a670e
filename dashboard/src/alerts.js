// The alert panel: what fires and is pending (severity, since when, value, threshold),
// an acknowledge button, and the silences. The live `alerts` topic of the WebSocket says
// when something changed; the rows themselves come from GET /api/alerts, which carries
// each instance's id for POST /api/alerts/{id}/ack.
import { api, qs } from "./api.js";
import { schedule, throttle } from "./frame.js";
import { el } from "./widget.js";
import { showTime } from "./format.js";

const num = new Intl.NumberFormat("en-US", { maximumFractionDigits: 4 });

export class AlertPanel {
  constructor(box, { onStates }) {
    this.box = box;
    this.onStates = onStates;
    this.alerts = [];
    this.silences = [];
    this.error = null;
    box.append(el("h2", "", "Alerts"));
    this.list = el("div", "alert-list");
    box.append(this.list);
    box.append(el("h3", "", "Silences"));
    this.silenceList = el("div", "silence-list");
    box.append(this.silenceList);
    this.refresh = throttle(() => this.load(), 250);
  }

  async load() {
    try {
      const [a, s] = await Promise.all([api(`/api/alerts?${qs({ state: "firing,pending" })}`), api("/api/silences")]);
      this.alerts = a.alerts;
      this.silences = s.silences;
      this.error = null;
    } catch (e) {
      this.error = e.message;
    }
    this.onStates(statesByKpi(this.alerts));
    schedule("alerts", () => this.render());
  }

  async ack(id, button) {
    button.disabled = true;
    button.textContent = "acknowledging…";
    try {
      await api(`/api/alerts/${encodeURIComponent(id)}/ack`, { method: "POST", body: {} });
    } catch (e) {
      this.error = `acknowledge failed: ${e.message}`;
    }
    await this.load();
  }

  render() {
    const rows = this.alerts.map((a) => {
      const acked = a.state === "firing" && a.acked_at;
      const row = el("div", `alert ${acked ? "acked" : a.state} sev-${a.severity}`);
      row.dataset.alertId = String(a.id);
      row.dataset.state = acked ? "acknowledged" : a.state;
      const title = el("div", "alert-title");
      title.append(el("span", "sev", a.severity), el("strong", "", a.alert), el("span", "muted", ` on ${a.kpi}${a.group_value ? ` · ${a.group_value}` : ""}`));
      const facts = el("div", "alert-facts");
      facts.append(
        el("span", "state", acked ? `acknowledged by ${a.acked_by}` : a.state),
        el("span", "", `opened ${showTime(a.firing_since || a.active_since)}`),
        el("span", "", `value ${a.value === null ? "—" : num.format(a.value)}`),
        el("span", "", `threshold ${a.op || ""} ${a.threshold === null ? "—" : num.format(a.threshold)}`),
      );
      row.append(title, facts);
      if (a.summary) row.append(el("div", "summary", summary(a)));
      if (a.state === "firing" && !acked) {
        const b = el("button", "ack", "Acknowledge");
        b.dataset.ack = String(a.id);
        b.addEventListener("click", () => this.ack(a.id, b));
        row.append(b);
      }
      return row;
    });
    if (!rows.length) rows.push(el("div", "empty", "Nothing firing or pending."));
    if (this.error) rows.unshift(el("div", "note", this.error));
    this.list.replaceChildren(...rows);
    const silences = this.silences.map((s) => {
      const row = el("div", `silence ${s.state}`);
      const matchers = (s.matchers || []).map((m) => `${m.name}${m.isEqual === false ? "!" : ""}${m.isRegex ? "~" : ""}="${m.value}"`).join(", ");
      row.append(el("div", "", matchers), el("div", "muted", `until ${showTime(s.endsAt)} · ${s.createdBy}${s.comment ? ` — ${s.comment}` : ""}`));
      return row;
    });
    if (!silences.length) silences.push(el("div", "empty", "No silences."));
    this.silenceList.replaceChildren(...silences);
  }
}

/** KPI → the colour state of its worst alert: firing > pending > acknowledged. */
function statesByKpi(alerts) {
  const rank = { none: 0, acknowledged: 1, pending: 2, firing: 3 };
  const out = {};
  for (const a of alerts) {
    const s = a.state === "firing" && a.acked_at ? "acknowledged" : a.state;
    if (!(s in rank)) continue;
    if (rank[s] > rank[out[a.kpi] || "none"]) out[a.kpi] = s;
  }
  return out;
}

/** kpi.alerts has the summary's template; the history's copy is rendered the same way. */
function summary(a) {
  const fill = { value: a.value === null ? "—" : num.format(a.value), threshold: a.threshold === null ? "—" : num.format(a.threshold), kpi: a.kpi, alert: a.alert, group: a.group_value || "" };
  return a.summary.replace(/\{\{\s*(value|threshold|kpi|alert|group)\s*\}\}/g, (_, k) => fill[k]);
}
