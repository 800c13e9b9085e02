//! Well-known license tags (the original's `internal/licensing/tags.go`).

/// The license is a trial.
pub const TAG_TRIAL: &str = "trial";

/// The customer may exceed the licensed user count and pay later.
pub const TAG_TRUE_UP: &str = "true-up";

/// The license is for Sourcegraph's own use.
pub const TAG_INTERNAL: &str = "internal";

/// The license is for development instances.
pub const TAG_DEV: &str = "dev";

/// The instance exports only Cody events (`cody`, `cody.*`) to the gateway.
pub const TAG_DISABLE_TELEMETRY_EVENTS_EXPORT: &str = "disable-telemetry-events-export";

/// The instance may run air-gapped, with telemetry export disabled or reduced.
pub const TAG_ALLOW_AIR_GAPPED: &str = "allow-air-gapped";

/// Prefix of the tag naming the license plan, as in `plan:enterprise-1`.
pub const PLAN_TAG_PREFIX: &str = "plan:";
