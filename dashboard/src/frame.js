// DOM updates batched per animation frame: a burst of WebSocket frames or fetch results
// costs one layout per frame, and a widget updated twice in a frame is drawn once.
const pending = new Map();
let requested = false;

export function schedule(key, draw) {
  pending.set(key, draw);
  if (!requested) {
    requested = true;
    requestAnimationFrame(flush);
  }
}

function flush() {
  requested = false;
  const draws = [...pending.values()];
  pending.clear();
  for (const draw of draws) {
    try {
      draw();
    } catch (e) {
      console.error("dashboard: draw failed", e);
    }
  }
}

/**
 * Runs `task` (async) at most once per `ms`, and never twice at a time: calls in
 * between are folded into one run after the current one. Used for the re-fetches that
 * updates trigger (the newest sparkline point, a top list), so 10 updates a second
 * cost one request a second per widget.
 */
export function throttle(task, ms) {
  let last = 0;
  let timer = null;
  let running = false;
  let again = false;
  const kick = () => {
    if (timer) return;
    if (running) {
      again = true;
      return;
    }
    timer = setTimeout(async () => {
      timer = null;
      running = true;
      last = Date.now();
      try {
        await task();
      } catch (e) {
        console.warn("dashboard:", e.message || e);
      } finally {
        running = false;
        if (again) {
          again = false;
          kick();
        }
      }
    }, Math.max(0, last + ms - Date.now()));
  };
  return kick;
}
