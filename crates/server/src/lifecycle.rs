//! Draining: once shutdown starts, the gateway takes no new work, finishes what it has, and
//! says so at `/-/ready`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{Notify, watch};

/// Shared between the RPC handlers, the diagnostics and `serve`.
#[derive(Clone)]
pub struct Lifecycle {
    state: Arc<State>,
}

struct State {
    draining: watch::Sender<bool>,
    active: AtomicUsize,
    idle: Notify,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle {
            state: Arc::new(State {
                draining: watch::channel(false).0,
                active: AtomicUsize::new(0),
                idle: Notify::new(),
            }),
        }
    }
}

impl Lifecycle {
    /// Stops taking new work; idempotent.
    pub fn start_draining(&self) {
        self.state.draining.send_replace(true);
    }

    /// Whether shutdown has started.
    pub fn is_draining(&self) -> bool {
        *self.state.draining.borrow()
    }

    /// Completes once shutdown has started.
    pub async fn draining(&self) {
        let mut draining = self.state.draining.subscribe();
        let _ = draining.wait_for(|draining| *draining).await;
    }

    /// Registers a stream or call as in progress; `None` once draining (the caller is refused).
    pub fn enter(&self) -> Option<ActiveWork> {
        self.state.active.fetch_add(1, Ordering::SeqCst);
        let work = ActiveWork {
            state: self.state.clone(),
        };
        // Checked after counting, so `idle` never misses work admitted during the switch.
        (!self.is_draining()).then_some(work)
    }

    /// Streams and calls in progress.
    pub fn active(&self) -> usize {
        self.state.active.load(Ordering::SeqCst)
    }

    /// Completes when no stream or call is in progress.
    pub async fn idle(&self) {
        loop {
            let notified = self.state.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.active() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// A stream or call in progress; ends when dropped.
pub struct ActiveWork {
    state: Arc<State>,
}

impl Drop for ActiveWork {
    fn drop(&mut self) {
        if self.state.active.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.state.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn draining_refuses_new_work_and_waits_for_the_rest() {
        let lifecycle = Lifecycle::default();
        let work = lifecycle.enter().expect("admitted before draining");
        lifecycle.start_draining();
        assert!(lifecycle.enter().is_none(), "refused while draining");
        assert_eq!(lifecycle.active(), 1);
        let idle = tokio::spawn({
            let lifecycle = lifecycle.clone();
            async move { lifecycle.idle().await }
        });
        tokio::task::yield_now().await;
        assert!(!idle.is_finished());
        drop(work);
        tokio::time::timeout(std::time::Duration::from_secs(1), idle)
            .await
            .expect("idle once the work ends")
            .expect("task");
    }
}
