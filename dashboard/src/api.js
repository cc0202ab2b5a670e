// JSON requests to the notifier's /api, with the token as a bearer header.
import { token, tokenRefused } from "./token.js";

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export async function api(path, { method = "GET", body } = {}) {
  const headers = { Accept: "application/json" };
  const t = token();
  if (t) headers.Authorization = `Bearer ${t}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let r;
  try {
    r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (e) {
    throw new ApiError(0, "network", "the notifier cannot be reached");
  }
  let json = null;
  try {
    json = await r.json();
  } catch {
    // not JSON: keep the status
  }
  const err = json && json.error;
  if (r.status === 401) {
    tokenRefused(err && err.message);
  }
  if (!r.ok) {
    throw new ApiError(r.status, (err && err.code) || `http_${r.status}`, (err && err.message) || r.statusText);
  }
  return json;
}

/** `?a=1&b=2` of the defined entries. */
export function qs(params) {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null) p.set(k, String(v));
  return p.toString();
}

export const kpiPath = (kpi, rest) => `/api/kpis/${encodeURIComponent(kpi)}/${rest}`;
