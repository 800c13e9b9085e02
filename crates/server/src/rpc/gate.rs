//! The drain gate: once shutdown starts, new calls are refused and a stream waiting for its next
//! message is ended; a payload being processed is finished and answered first (docs/operations.md).

use crate::error::ServerError;
use crate::lifecycle::{ActiveWork, Lifecycle};

/// Admits a call, which then counts as in progress (so a drain waits for it) until the returned
/// guard is dropped; refuses it with [`ServerError::ShuttingDown`] once draining.
pub fn admit(lifecycle: &Lifecycle) -> Result<ActiveWork, ServerError> {
    lifecycle.enter().ok_or(ServerError::ShuttingDown)
}

/// Completes with the refusal that ends a stream waiting for its next message, once draining.
pub async fn drained(lifecycle: &Lifecycle) -> ServerError {
    lifecycle.draining().await;
    ServerError::ShuttingDown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn calls_are_refused_and_waiting_streams_ended_once_draining() {
        let lifecycle = Lifecycle::default();
        let admitted = admit(&lifecycle).expect("admitted before draining");
        lifecycle.start_draining();
        assert_eq!(admit(&lifecycle).err(), Some(ServerError::ShuttingDown));
        assert_eq!(drained(&lifecycle).await, ServerError::ShuttingDown);
        assert_eq!(
            lifecycle.active(),
            1,
            "the admitted call is still in progress"
        );
        drop(admitted);
        assert_eq!(lifecycle.active(), 0);
    }
}
