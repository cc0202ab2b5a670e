// Boots a dashboard: its definition from GET /api/dashboards/{name}, one widget per
// entry, live values over the WebSocket, history over the API.
import { api } from "./api.js";
import { onTokenRefused, takeTokenFromUrl } from "./token.js";
import { Connection } from "./connection.js";
import { Card } from "./cards.js";
import { Hourly } from "./hourly.js";
import { Chart } from "./charts.js";
import { Top } from "./tops.js";
import { AlertPanel } from "./alerts.js";
import { el } from "./widget.js";

const $ = (id) => document.getElementById(id);

function fatal(title, message) {
  const box = $("fatal");
  box.replaceChildren(el("h2", "", title), el("p", "", message));
  box.hidden = false;
  $("main").hidden = true;
  document.body.dataset.fatal = title;
}

const CONN_TEXT = { connecting: "connecting…", live: "live", reconnecting: "reconnecting", refused: "signed out" };

function showConnection(state, inSecs) {
  const c = $("conn");
  c.dataset.state = state;
  c.textContent = state === "reconnecting" && inSecs !== undefined ? `reconnecting in ${inSecs} s` : CONN_TEXT[state] || state;
}

async function boot() {
  takeTokenFromUrl();
  let conn = null;
  onTokenRefused((message) => {
    if (conn) conn.stop();
    showConnection("refused");
    fatal(
      "Your access token was refused",
      `The notifier said: ${message}. The token is missing, invalid or has expired. Open this dashboard again with a fresh link ending in ?token=…`,
    );
  });

  const path = location.pathname.match(/^\/d\/([^/]+)\/?$/);
  let board;
  try {
    const list = await api("/api/dashboards");
    const name = path ? decodeURIComponent(path[1]) : list.dashboards[0].name;
    board = await api(`/api/dashboards/${encodeURIComponent(name)}`);
    renderNav(list.dashboards, board.name);
  } catch (e) {
    if (e.status !== 401) fatal("This dashboard cannot be shown", e.message);
    return;
  }
  document.title = `${board.title} · pg_kpi`;
  $("title").textContent = board.title;

  const byKpi = new Map();
  const add = (w, box) => {
    box.append(w.el);
    if (!byKpi.has(w.spec.kpi)) byKpi.set(w.spec.kpi, []);
    byKpi.get(w.spec.kpi).push(w);
    return w;
  };
  const cards = board.cards.map((s) => add(new Card(s), $("cards")));
  board.hourly.forEach((s) => add(new Hourly(s), $("hourly")));
  board.charts.forEach((s) => add(new Chart(s), $("charts")));
  board.tops.forEach((s) => add(new Top(s), $("tops")));
  const all = [...byKpi.values()].flat();

  const panel = new AlertPanel($("alerts"), {
    onStates: (states) => cards.forEach((c) => c.setAlert(states[c.spec.kpi] || "none")),
  });
  panel.load();

  const seen = new Set();
  const markReady = () => {
    if (document.body.dataset.ready) return;
    if (cards.every((c) => c.current !== undefined || c.problem || c.gone)) {
      requestAnimationFrame(() => (document.body.dataset.ready = String(Math.round(performance.now()))));
    }
  };
  // Widgets whose KPI the config names but the notifier does not know are told so.
  const kpis = [...byKpi.keys()];
  conn = new Connection(kpis, {
    state: showConnection,
    value(kpi, data) {
      seen.add(kpi);
      for (const w of byKpi.get(kpi) || []) w.snapshot(data);
      markReady();
    },
    error(m) {
      const ws = byKpi.get(m.kpi) || [];
      if (m.code === "unknown_kpi") {
        const why = seen.has(m.kpi) ? `KPI "${m.kpi}" was dropped` : `no KPI named "${m.kpi}"`;
        ws.forEach((w) => w.setGone(why));
      } else if (m.code === "forbidden") {
        ws.forEach((w) => w.setGone(`this token may not read KPI "${m.kpi}"`));
      } else if (m.code === "not_ready" && m.kpi) {
        setTimeout(() => conn.ws && conn.ws.readyState === 1 && conn.ws.send(JSON.stringify({ op: "subscribe", kpis: [m.kpi] })), 2000);
      }
      markReady();
    },
    alerts: () => panel.refresh(),
    resync: () => {
      all.forEach((w) => w.resync());
      panel.refresh();
    },
  });
  conn.start();

  let resizing = null;
  addEventListener("resize", () => {
    clearTimeout(resizing);
    resizing = setTimeout(() => all.forEach((w) => w.resize && w.resize()), 150);
  });
}

function renderNav(dashboards, current) {
  if (dashboards.length < 2) return;
  const nav = $("nav");
  nav.replaceChildren(
    ...dashboards.map((d) => {
      const a = el("a", d.name === current ? "on" : "", d.title);
      a.href = `/d/${encodeURIComponent(d.name)}`;
      return a;
    }),
  );
}

boot();
