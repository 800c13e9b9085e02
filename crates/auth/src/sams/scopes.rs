//! SAMS scopes (`service::permission::action`) and the rule deciding whether a granted scope
//! covers a required one.

/// The scope a managed service needs to write events.
pub const WRITE_EVENTS_SCOPE: &str = "telemetry_gateway::events::write";

/// A parsed `service::permission::action` scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scope<'a> {
    /// The service that defines the scope (`telemetry_gateway`).
    pub service: &'a str,
    /// The permission, possibly dotted (`events`, `events.cody`).
    pub permission: &'a str,
    /// The action (`read`, `write`, `delete`).
    pub action: &'a str,
}

impl<'a> Scope<'a> {
    /// Parses a scope; `None` for anything that is not three non-empty `::`-separated parts
    /// (OpenID aliases such as `openid` and `profile`, say).
    pub fn parse(scope: &'a str) -> Option<Scope<'a>> {
        let mut parts = scope.split("::");
        let (service, permission, action) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || [service, permission, action].iter().any(|p| p.is_empty()) {
            return None;
        }
        Some(Scope {
            service,
            permission,
            action,
        })
    }

    /// Whether this granted scope covers `required`: same service and action, and a permission
    /// equal to the required one or a dotted prefix of it (`events` covers `events.cody`).
    pub fn covers(&self, required: &Scope<'_>) -> bool {
        self.service == required.service
            && self.action == required.action
            && (self.permission == required.permission
                || required
                    .permission
                    .strip_prefix(self.permission)
                    .is_some_and(|rest| rest.starts_with('.')))
    }
}

/// Whether any of the `granted` scopes covers `required`; a malformed `required` is never
/// allowed.
pub fn scopes_allow<S: AsRef<str>>(granted: &[S], required: &str) -> bool {
    let Some(required) = Scope::parse(required) else {
        return false;
    };
    granted
        .iter()
        .filter_map(|scope| Scope::parse(scope.as_ref()))
        .any(|scope| scope.covers(&required))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sams_prefix_rules() {
        let cases: &[(&[&str], &str, bool)] = &[
            (&[WRITE_EVENTS_SCOPE], WRITE_EVENTS_SCOPE, true),
            (
                &["foo", "bar", WRITE_EVENTS_SCOPE],
                WRITE_EVENTS_SCOPE,
                true,
            ),
            (&["foo", "bar"], WRITE_EVENTS_SCOPE, false),
            (&[], WRITE_EVENTS_SCOPE, false),
            (&["openid", "profile", "email"], WRITE_EVENTS_SCOPE, false),
            // Another action or service never matches.
            (
                &["telemetry_gateway::events::read"],
                WRITE_EVENTS_SCOPE,
                false,
            ),
            (
                &["telemetry_gateway::events::delete"],
                WRITE_EVENTS_SCOPE,
                false,
            ),
            (&["other_service::events::write"], WRITE_EVENTS_SCOPE, false),
            // A dotted prefix of the required permission covers it; the reverse does not.
            (
                &["telemetry_gateway::events::write"],
                "telemetry_gateway::events.cody::write",
                true,
            ),
            (
                &["telemetry_gateway::events.cody::write"],
                WRITE_EVENTS_SCOPE,
                false,
            ),
            // A plain string prefix is not a permission prefix.
            (
                &["telemetry_gateway::event::write"],
                WRITE_EVENTS_SCOPE,
                false,
            ),
            (
                &["telemetry_gateway::events::write"],
                "telemetry_gateway::eventsx::write",
                false,
            ),
            // Case matters.
            (
                &["Telemetry_Gateway::events::write"],
                WRITE_EVENTS_SCOPE,
                false,
            ),
            (
                &["telemetry_gateway::events::WRITE"],
                WRITE_EVENTS_SCOPE,
                false,
            ),
            // Malformed scopes are ignored.
            (
                &["telemetry_gateway::events::write::extra"],
                WRITE_EVENTS_SCOPE,
                false,
            ),
            (&["telemetry_gateway::::write"], WRITE_EVENTS_SCOPE, false),
            (&["telemetry_gateway::events"], WRITE_EVENTS_SCOPE, false),
            (
                &["telemetry_gateway events write"],
                WRITE_EVENTS_SCOPE,
                false,
            ),
            (
                &[" telemetry_gateway::events::write"],
                WRITE_EVENTS_SCOPE,
                false,
            ),
            // A malformed requirement is never met.
            (&["a::b::c"], "a::b", false),
            (&[""], "", false),
        ];
        for (granted, required, allowed) in cases {
            assert_eq!(
                scopes_allow(granted, required),
                *allowed,
                "granted {granted:?}, required {required}"
            );
        }
    }

    #[test]
    fn parse_splits_three_parts() {
        assert_eq!(
            Scope::parse("telemetry_gateway::events.cody::write"),
            Some(Scope {
                service: "telemetry_gateway",
                permission: "events.cody",
                action: "write"
            })
        );
        assert_eq!(Scope::parse("openid"), None);
    }
}
