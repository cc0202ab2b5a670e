// Number formats named in the dashboard config: number, integer, currency, percent, ms.
const LOCALE = "en-US";

export function formatter(format = "number", currency = "USD") {
  let f;
  switch (format) {
    case "integer":
      f = new Intl.NumberFormat(LOCALE, { maximumFractionDigits: 0 });
      return (v) => f.format(v);
    case "currency":
      f = new Intl.NumberFormat(LOCALE, { style: "currency", currency });
      return (v) => f.format(v);
    case "percent":
      // A ratio (0.052) shown as a percentage (5.2 %).
      f = new Intl.NumberFormat(LOCALE, { style: "percent", maximumFractionDigits: 2 });
      return (v) => f.format(v);
    case "ms": {
      const ms = new Intl.NumberFormat(LOCALE, { maximumFractionDigits: 1 });
      const s = new Intl.NumberFormat(LOCALE, { maximumFractionDigits: 2 });
      return (v) => (Math.abs(v) >= 1000 ? `${s.format(v / 1000)} s` : `${ms.format(v)} ms`);
    }
    default:
      f = new Intl.NumberFormat(LOCALE, { maximumFractionDigits: 2 });
      return (v) => f.format(v);
  }
}

/** Formats `v`, or a dash when there is no value (an empty window of an average). */
export function show(fmt, v) {
  return v === null || v === undefined || Number.isNaN(v) ? "—" : fmt(v);
}

/** The change from `before` to `now` in %, or null when there is nothing to compare. */
export function change(now, before) {
  if (now === null || now === undefined || before === null || before === undefined) return null;
  if (before === 0) return now === 0 ? 0 : null;
  return ((now - before) / Math.abs(before)) * 100;
}

export function showChange(pct) {
  if (pct === null) return { arrow: "", text: "no data a week ago", dir: "none" };
  const dir = Math.abs(pct) < 0.05 ? "flat" : pct > 0 ? "up" : "down";
  const arrow = dir === "up" ? "▲" : dir === "down" ? "▼" : "▶";
  return { arrow, text: `${Math.abs(pct).toFixed(1)} % vs last week`, dir };
}

/** Seconds in a Postgres interval as kpi.snapshot prints it: `00:01:00`, `1 day 02:00:00`. */
export function intervalSeconds(text) {
  if (!text) return 60;
  let secs = 0;
  const days = /(-?\d+) days?/.exec(text);
  if (days) secs += Number(days[1]) * 86400;
  const hms = /(\d+):(\d\d):(\d\d(?:\.\d+)?)/.exec(text);
  if (hms) secs += Number(hms[1]) * 3600 + Number(hms[2]) * 60 + Number(hms[3]);
  return secs > 0 ? secs : 60;
}

const time = new Intl.DateTimeFormat(LOCALE, { hour: "2-digit", minute: "2-digit", hour12: false });
const dayTime = new Intl.DateTimeFormat(LOCALE, { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", hour12: false });

export function showTime(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  return Date.now() - d.getTime() < 86400e3 ? time.format(d) : dayTime.format(d);
}
