//! Graceful shutdown: the OS signals that start it, and the flag every task watches.
//!
//! `serve` takes any future as its shutdown trigger (tests pass a oneshot, `main` passes
//! [`signal`]). When it fires, the HTTP server stops accepting, WebSocket sessions send
//! close 1001 ("going away"), SSE streams end, the LISTEN task stops, and `serve` waits
//! up to `shutdown_grace_ms` for the streaming connections to finish.

use std::sync::Arc;
use std::time::Duration;

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

/// Sets the shutdown flag.
pub struct Trigger(watch::Sender<bool>);

/// A cheap, cloneable view of the shutdown flag.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (Trigger(tx), Shutdown(rx))
}

impl Trigger {
    pub fn fire(&self) {
        self.0.send_replace(true);
    }
}

impl Shutdown {
    /// Resolves once shutdown has started (at once if it already has).
    pub async fn wait(&mut self) {
        // An error means the trigger was dropped, which only happens as `serve` returns:
        // treat it as shutdown too.
        let _ = self.0.wait_for(|down| *down).await;
    }

    /// [`Shutdown::wait`] as an owned future, for a `select!` loop to pin once: a wait
    /// created anew on every iteration registers and removes a waiter on the one channel
    /// every connection shares, and 10,000 sessions doing that on every value they send
    /// contend for its lock.
    pub async fn fired(mut self) {
        self.wait().await
    }

    pub fn is_shutting_down(&self) -> bool {
        *self.0.borrow()
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
    async fn drain_waits_for_permits() {
        let sem = Arc::new(Semaphore::new(2));
        let permit = sem.clone().try_acquire_owned().ok();
        let open = drain(&sem, 2, Duration::from_millis(50)).await;
        assert_eq!(open, 1);
        drop(permit);
        assert_eq!(drain(&sem, 2, Duration::from_millis(50)).await, 0);
    }
}
