//! Waiting in tests for something the gateway does in the background (a connection closing, a
//! counter incremented after a sync, memory given back), without a fixed sleep.

use std::future::Future;
use std::time::{Duration, Instant};

/// Tries `attempt` every `every` until it gives `Ok`, for at most `within`, and returns that
/// value; once the time is up, panics with the last `Err`, which should say what was awaited and
/// what was seen instead.
pub async fn eventually<T, F, Fut>(within: Duration, every: Duration, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + within;
    loop {
        match attempt().await {
            Ok(value) => return value,
            Err(seen) if Instant::now() >= deadline => {
                panic!("not within {within:?}: {seen}")
            }
            Err(_) => tokio::time::sleep(every).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn returns_the_first_success_and_panics_with_the_last_failure() {
        let tries = AtomicUsize::new(0);
        let third = eventually(Duration::from_secs(5), Duration::from_millis(1), || async {
            match tries.fetch_add(1, Ordering::SeqCst) {
                n if n < 2 => Err(format!("try {n}")),
                n => Ok(n),
            }
        })
        .await;
        assert_eq!(third, 2);

        let never = tokio::spawn(eventually(
            Duration::from_millis(20),
            Duration::from_millis(5),
            || async { Err::<(), _>("still closed".to_string()) },
        ));
        let panic = never.await.expect_err("it gives up").into_panic();
        let message = panic.downcast_ref::<String>().expect("a message");
        assert!(message.contains("still closed"), "{message}");
    }
}
