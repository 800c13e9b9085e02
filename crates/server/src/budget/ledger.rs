//! What one stream's budgeted body and its handler share.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::accounting::Reservation;

/// The reservations of admitted messages, oldest first (the body adds one per message, the
/// handler takes one per message it receives and holds it until the payload is answered), the
/// room kept for tonic's receive buffer, and the length of the stream's rendered metadata
/// (repeated in every event's payload).
#[derive(Debug)]
pub struct StreamLedger {
    admitted: Mutex<VecDeque<Reservation>>,
    kept: Mutex<Reservation>,
    metadata_json_len: AtomicUsize,
}

impl Default for StreamLedger {
    fn default() -> Self {
        StreamLedger {
            admitted: Mutex::default(),
            kept: Mutex::default(),
            metadata_json_len: AtomicUsize::new(usize::MAX),
        }
    }
}

impl StreamLedger {
    /// The reservation of the next received message (nothing when the budget is off).
    pub fn take(&self) -> Reservation {
        self.admitted
            .lock()
            .map(|mut admitted| admitted.pop_front())
            .ok()
            .flatten()
            .unwrap_or_else(Reservation::none)
    }

    /// Keeps room for tonic's receive buffer out of `reservation`, once its payload is answered.
    pub fn keep_receive_buffer(&self, reservation: &mut Reservation) {
        let kept = reservation.keep_receive_buffer();
        if let Ok(mut slot) = self.kept.lock() {
            slot.merge(kept);
        }
    }

    /// Records the length of the stream's rendered metadata, which every event's payload repeats.
    pub fn set_metadata_json_len(&self, len: usize) {
        self.metadata_json_len.store(len, Ordering::Relaxed);
    }

    /// The length of the stream's rendered metadata, once the handler has rendered it.
    pub(crate) fn metadata_json_len(&self) -> Option<usize> {
        match self.metadata_json_len.load(Ordering::Relaxed) {
            usize::MAX => None,
            len => Some(len),
        }
    }

    /// A message was admitted: its reservation waits for the handler.
    pub(crate) fn push(&self, reservation: Reservation) {
        if let Ok(mut admitted) = self.admitted.lock() {
            admitted.push_back(reservation);
        }
    }

    /// The room kept for the receive buffer, to be reused by the next message.
    pub(crate) fn take_kept(&self) -> Reservation {
        self.kept
            .lock()
            .map(|mut kept| std::mem::take(&mut *kept))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::budget::InflightBudget;
    use crate::budget::accounting::Part;

    #[tokio::test]
    async fn a_stream_keeps_room_for_its_largest_receive_buffer() {
        let budget = InflightBudget::new(1000, Duration::from_millis(10));
        let ledger = StreamLedger::default();
        let mut first = budget.try_take(Part::Held, 300, None).expect("room");
        first.buffer = 100;
        ledger.keep_receive_buffer(&mut first);
        drop(first);
        assert_eq!(
            budget.used(),
            100,
            "only the buffer is held after the payload"
        );
        let kept = ledger.take_kept();
        assert_eq!((kept.bytes(), kept.buffer), (100, 100));
        drop(kept);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn admitted_reservations_are_taken_oldest_first_and_metadata_is_unknown_until_set() {
        let ledger = StreamLedger::default();
        let mut first = Reservation::none();
        first.buffer = 1;
        let mut second = Reservation::none();
        second.buffer = 2;
        ledger.push(first);
        ledger.push(second);
        assert_eq!(ledger.take().buffer, 1);
        assert_eq!(ledger.take().buffer, 2);
        assert_eq!(
            ledger.take().buffer,
            0,
            "nothing left: a reservation of nothing"
        );
        assert_eq!(ledger.metadata_json_len(), None);
        ledger.set_metadata_json_len(42);
        assert_eq!(ledger.metadata_json_len(), Some(42));
    }
}
