//! Graceful shutdown: the OS signals that start it, and the flag every task watches.
//!
//! `serve` takes any future as its shutdown trigger (tests pass a oneshot, `main` passes
//! [`signal`]). When it fires, the HTTP server stops accepting, WebSocket sessions send
//! close 1001 ("going away"), SSE streams end, the LISTEN task stops, and `serve` waits
//! up to `shutdown_grace_ms` for the streaming connections to finish.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::task::AtomicWaker;
use tokio::sync::{watch, Semaphore};

/// Resolves on SIGTERM or ctrl-c (SIGINT).
pub async fn signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("ctrl-c received, shutting down"),
        _ = terminate => tracing::info!("SIGTERM received, shutting down"),
    }
}

/// Sets the shutdown flag (also when dropped: `serve` is returning).
pub struct Trigger {
    tx: watch::Sender<bool>,
    sessions: Arc<Sessions>,
}

/// A cheap, cloneable view of the shutdown flag.
#[derive(Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
    sessions: Arc<Sessions>,
}

/// What [`Fired`] waits on: a flag, and a waker per waiting session.
#[derive(Default)]
struct Sessions {
    fired: AtomicBool,
    wakers: Mutex<Registered>,
}

#[derive(Default)]
struct Registered {
    wakers: Vec<Weak<AtomicWaker>>,
    /// Length at which dead entries are swept out (doubles with the live ones).
    sweep_at: usize,
}

pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    let sessions = Arc::new(Sessions::default());
    (
        Trigger {
            tx,
            sessions: sessions.clone(),
        },
        Shutdown { rx, sessions },
    )
}

impl Trigger {
    pub fn fire(&self) {
        self.tx.send_replace(true);
        self.sessions.fire();
    }
}

impl Drop for Trigger {
    fn drop(&mut self) {
        self.sessions.fire();
    }
}

impl Sessions {
    fn fire(&self) {
        self.fired.store(true, Ordering::Release);
        let wakers = std::mem::take(&mut self.lock().wakers);
        for w in wakers.iter().filter_map(Weak::upgrade) {
            w.wake();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registered> {
        self.wakers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Shutdown {
    /// Resolves once shutdown has started (at once if it already has).
    pub async fn wait(&mut self) {
        // An error means the trigger was dropped, which only happens as `serve` returns:
        // treat it as shutdown too.
        let _ = self.rx.wait_for(|down| *down).await;
    }

    /// A wait for shutdown for a `select!` loop to pin once and poll on every turn.
    /// Unlike [`Shutdown::wait`], polling it takes no lock: each one has a waker of its
    /// own, registered once, and the shutdown flag is an atomic. (A `watch` wait takes
    /// the channel's lock on every poll, and 10,000 WebSocket sessions poll theirs for
    /// every value they send.)
    pub fn fired(self) -> Fired {
        let waker = Arc::new(AtomicWaker::new());
        {
            let mut r = self.sessions.lock();
            if r.wakers.len() >= r.sweep_at {
                r.wakers.retain(|w| w.strong_count() > 0);
                r.sweep_at = (r.wakers.len() * 2).max(64);
            }
            r.wakers.push(Arc::downgrade(&waker));
        }
        Fired {
            sessions: self.sessions,
            waker,
        }
    }

    pub fn is_shutting_down(&self) -> bool {
        *self.rx.borrow()
    }
}

/// See [`Shutdown::fired`].
pub struct Fired {
    sessions: Arc<Sessions>,
    waker: Arc<AtomicWaker>,
}

impl Future for Fired {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // Registered before the flag is read, and the flag is set before the wakers are
        // woken, so a shutdown between the two is never missed.
        self.waker.register(cx.waker());
        if self.sessions.fired.load(Ordering::Acquire) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// Waits until every streaming connection has returned its permit, or `grace` passes.
/// Returns how many were still open.
pub async fn drain(permits: &Arc<Semaphore>, total: usize, grace: Duration) -> usize {
    let deadline = tokio::time::Instant::now() + grace;
    loop {
        let open = total.saturating_sub(permits.available_permits());
        if open == 0 || tokio::time::Instant::now() >= deadline {
            return open;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wait_resolves_after_fire_and_for_late_waiters() {
        let (trigger, mut s) = channel();
        assert!(!s.is_shutting_down());
        let mut early = s.clone();
        let h = tokio::spawn(async move { early.wait().await });
        trigger.fire();
        h.await.ok();
        s.wait().await;
        assert!(s.is_shutting_down());
    }

    #[tokio::test]
    async fn fired_wakes_pinned_waiters_and_resolves_for_late_ones() {
        let (trigger, s) = channel();
        let waiters: Vec<_> = (0..100).map(|_| tokio::spawn(s.clone().fired())).collect();
        // Waiters that already ended are swept out as new ones register.
        for _ in 0..200 {
            drop(s.clone().fired());
        }
        tokio::task::yield_now().await;
        trigger.fire();
        for w in waiters {
            tokio::time::timeout(Duration::from_secs(5), w)
                .await
                .expect("woken")
                .expect("joined");
        }
        s.clone().fired().await;
        // Dropping the trigger (serve returning) counts as shutdown too.
        let (trigger, s) = channel();
        let w = tokio::spawn(s.fired());
        drop(trigger);
        tokio::time::timeout(Duration::from_secs(5), w)
            .await
            .expect("woken")
            .expect("joined");
    }

    #[tokio::test]
    async fn drain_waits_for_permits() {
        let sem = Arc::new(Semaphore::new(2));
        let permit = sem.clone().try_acquire_owned().ok();
        let open = drain(&sem, 2, Duration::from_millis(50)).await;
        assert_eq!(open, 1);
        drop(permit);
        assert_eq!(drain(&sem, 2, Duration::from_millis(50)).await, 0);
    }
}
