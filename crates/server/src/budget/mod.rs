//! The memory budget: a bound on the bytes the gateway holds for event payloads at once, charged
//! by what a message costs once decoded, not by its wire size.
//!
//! The request body of an events RPC is wrapped in a budgeted body ([`layer`] puts it there),
//! which parses gRPC's message framing and admits each message in two steps (the cost model and
//! the reasons are in docs/security.md):
//!
//! 1. **Receive.** At a message's 5-byte header, room for its wire bytes is taken from the
//!    *receive* part of the budget (a quarter of it). While there is none, the body stops reading,
//!    so HTTP/2 flow control holds the message at the sender. The bytes then pass on to tonic as
//!    they arrive (a compressed message is kept here instead), while a streaming skim of the
//!    protobuf structure counts its events and nested messages. An admitted message must keep
//!    arriving at a minimum rate, or its stream ends and its room is freed.
//! 2. **Hold.** When the message is complete, its decoded cost is known: `WEIGHT` × its decoded
//!    length, plus [`EVENT_COST`] and the rendered request metadata per event, plus
//!    [`MESSAGE_COST`] per nested message. That room is taken from the *held* part (the other
//!    three quarters) before tonic gets the message's last byte (a compressed message is
//!    decompressed only now, off the async workers, never past its known size), and the
//!    receive room is returned. The handler keeps the held room until it has answered the payload.
//!
//! A stream waits for held room while holding only receive room, and nothing that holds held room
//! waits for receive room, so waits cannot form a cycle; every wait ends by admission or, after
//! `wait`, by a refusal with a retry hint. One connection may hold only a share of each part, and
//! a message that costs more than that share is refused naming the limit.
//!
//! One file per concern:
//!
//! | file | concern |
//! |---|---|
//! | [`accounting`] | the budget's two parts, connection shares, reservations, waiting for room |
//! | [`ledger`] | what one stream's body and handler share: admitted reservations, the kept buffer |
//! | [`cost`] | what a message costs once decoded |
//! | [`framing`] | gRPC message headers, encodings, bounded decompression |
//! | [`body`] | the request body that admits each message (the `poll_frame` state machine) |
//! | [`layer`] | the tower layer that wraps the events service's request bodies |

pub mod accounting;
pub mod body;
pub mod cost;
pub mod framing;
pub mod layer;
pub mod ledger;

pub use accounting::{InflightBudget, Reservation};
pub use body::UNARY_MESSAGE_MAX_BYTES;
pub use cost::{EVENT_COST, MESSAGE_COST, WEIGHT, message_cost, request_cost};
pub use layer::{BudgetLayer, BudgetService};
pub use ledger::StreamLedger;
