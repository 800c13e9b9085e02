//! A [`Publisher`] double for tests: it records every message, and each message's fate is
//! programmed by its payload (acknowledged, refused, or never answered), so timeouts, partial
//! acknowledgements and shutdown can be tested without Pub/Sub or its emulator.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;

use super::{Publisher, TopicProblem};
use crate::Attributes;

/// What the double answers to one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The server acknowledged it.
    Ack,
    /// The publish failed with this error.
    Fail(String),
    /// No answer, ever (an unreachable Pub/Sub).
    Hang,
}

/// A programmable [`Publisher`]. Messages are acknowledged unless their payload was given
/// another [`Answer`] with [`MockPublisher::answer`].
#[derive(Debug, Default)]
pub struct MockPublisher {
    answers: Mutex<HashMap<Bytes, Answer>>,
    published: Mutex<Vec<(Bytes, Attributes)>>,
    topic: Mutex<Option<TopicProblem>>,
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
    flushes: AtomicUsize,
}

impl MockPublisher {
    /// A double that acknowledges every message and whose topic exists.
    pub fn new() -> MockPublisher {
        MockPublisher::default()
    }

    /// Answers the message whose data is `payload` with `answer`.
    pub fn answer(&self, payload: impl Into<Bytes>, answer: Answer) {
        self.lock_answers().insert(payload.into(), answer);
    }

    /// Makes the topic check fail with `problem` (`None`: the topic exists).
    pub fn set_topic_problem(&self, problem: Option<TopicProblem>) {
        *self
            .topic
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = problem;
    }

    /// Every message handed to the double, in the order its publish started.
    pub fn published(&self) -> Vec<(Bytes, Attributes)> {
        self.published
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
    }

    /// The most publishes that were awaiting an answer at once.
    pub fn most_in_flight(&self) -> usize {
        self.most_in_flight.load(Ordering::SeqCst)
    }

    /// How many times the sink flushed the client.
    pub fn flushes(&self) -> usize {
        self.flushes.load(Ordering::SeqCst)
    }

    fn lock_answers(&self) -> std::sync::MutexGuard<'_, HashMap<Bytes, Answer>> {
        self.answers
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

/// Counts a publish as awaiting its answer while alive.
struct InFlight<'a>(&'a MockPublisher);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Publisher for MockPublisher {
    async fn publish(&self, data: Bytes, attributes: &Attributes) -> Result<(), String> {
        self.published
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .push((data.clone(), attributes.clone()));
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_in_flight.fetch_max(now, Ordering::SeqCst);
        let _in_flight = InFlight(self);
        let answer = self.lock_answers().get(&data).cloned();
        // Let other publishes start, as a real client's batching would.
        tokio::task::yield_now().await;
        match answer.unwrap_or(Answer::Ack) {
            Answer::Ack => Ok(()),
            Answer::Fail(error) => Err(error),
            Answer::Hang => std::future::pending().await,
        }
    }

    async fn flush(&self) {
        self.flushes.fetch_add(1, Ordering::SeqCst);
    }

    async fn check_topic(&self) -> Result<(), TopicProblem> {
        match self
            .topic
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
        {
            None => Ok(()),
            Some(problem) => Err(problem),
        }
    }
}
