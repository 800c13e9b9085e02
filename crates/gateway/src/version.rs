//! The version the gateway reports (`/-/version`, the start-up log, Sentry's release, the
//! `service.version` of metrics and traces), stamped at build time.
//!
//! `TELEMETRY_GATEWAY_BUILD_VERSION` and `TELEMETRY_GATEWAY_BUILD_COMMIT`, set in the environment
//! of `cargo build` (the container image passes them as build arguments: see `deploy/README.md`),
//! replace the crate version and add the commit: `1.2.3+0123456789ab`. Unset, the version is the
//! crate's.

use std::sync::LazyLock;

/// The release version given at build time, or the crate version.
const BUILD_VERSION: Option<&str> = option_env!("TELEMETRY_GATEWAY_BUILD_VERSION");
/// The source commit given at build time.
const BUILD_COMMIT: Option<&str> = option_env!("TELEMETRY_GATEWAY_BUILD_COMMIT");

static VERSION: LazyLock<String> =
    LazyLock::new(|| stamp(env!("CARGO_PKG_VERSION"), BUILD_VERSION, BUILD_COMMIT));

/// The gateway's version, with the commit it was built from when that was stamped.
pub fn version() -> &'static str {
    &VERSION
}

/// Combines the crate version with the stamped version and commit (empty values count as unset;
/// the commit is shortened to 12 characters, as a semver build suffix).
fn stamp(crate_version: &str, version: Option<&str>, commit: Option<&str>) -> String {
    let version = version
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .unwrap_or(crate_version);
    match commit.map(str::trim).filter(|c| !c.is_empty()) {
        Some(commit) => {
            let short: String = commit.chars().take(12).collect();
            format!("{version}+{short}")
        }
        None => version.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::stamp;

    #[test]
    fn unstamped_builds_report_the_crate_version() {
        assert_eq!(stamp("0.1.0", None, None), "0.1.0");
        assert_eq!(stamp("0.1.0", Some(""), Some(" ")), "0.1.0");
    }

    #[test]
    fn a_stamped_commit_is_a_short_build_suffix() {
        assert_eq!(
            stamp(
                "0.1.0",
                None,
                Some("0123456789abcdef0123456789abcdef01234567")
            ),
            "0.1.0+0123456789ab"
        );
    }

    #[test]
    fn a_stamped_version_replaces_the_crate_version() {
        assert_eq!(
            stamp("0.1.0", Some("2026.11.30"), Some("abc123")),
            "2026.11.30+abc123"
        );
    }
}
