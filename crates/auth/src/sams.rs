//! SAMS (Sourcegraph Accounts Management System) machine-to-machine tokens, as the gateway uses
//! them to authenticate managed services.
//!
//! A managed service presents a SAMS access token; the gateway asks SAMS whether the token is
//! active and which scopes it carries ([`SamsClient::introspect`]), authorising that call with
//! its own client-credentials token. Introspection results are cached for a short while and
//! concurrent checks of one token share one call; the number of calls in progress is bounded. This module speaks HTTP to SAMS and knows
//! nothing of gRPC: the server turns [`SamsError`] and [`Introspection`] into statuses.

mod client;
mod config;
mod error;
mod introspection;
mod scopes;
mod token_source;

pub use client::SamsClient;
pub use config::{
    DEFAULT_MAX_CONCURRENT_INTROSPECTIONS, DEFAULT_SAMS_URL, IntrospectionCacheConfig,
    SamsClientConfig,
};
pub use error::SamsError;
pub use introspection::Introspection;
pub use scopes::{Scope, WRITE_EVENTS_SCOPE, scopes_allow};
