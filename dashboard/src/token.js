// The access token: given once in the address (?token=…), then kept in this tab's
// sessionStorage and taken out of the address bar, so it is not bookmarked, shared in
// a screenshot or sent as a Referer.
const KEY = "pg_kpi.token";

export function takeTokenFromUrl() {
  const url = new URL(location.href);
  const token = url.searchParams.get("token");
  if (token === null) return;
  if (token) sessionStorage.setItem(KEY, token);
  url.searchParams.delete("token");
  history.replaceState(history.state, "", url.pathname + url.search + url.hash);
}

export function token() {
  return sessionStorage.getItem(KEY);
}

let refused = () => {};

/** Called once with the server's message when it refuses the token (401, close 4001). */
export function onTokenRefused(f) {
  refused = f;
}

export function tokenRefused(message) {
  // A refused token is useless: forget it, so a fresh ?token= link is the way back.
  sessionStorage.removeItem(KEY);
  refused(message || "the token was refused");
}
