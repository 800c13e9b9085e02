//! The deployment as code under `deploy/terraform/`, read with hcl-rs: what each environment is
//! (the arguments its root module gives the `telemetry-gateway` module) and the alert policies
//! that module creates. `cargo xtask handbook` renders them into the operations handbook; the
//! deployment checks (`deploy_checks.rs`) test them.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use hcl::expr::{Expression, ObjectKey, TemplateExpr};
use hcl::{Block, Body};

/// The module of one environment.
pub const MODULE_DIR: &str = "deploy/terraform/modules/telemetry-gateway";
/// One directory per environment, each a Terraform root using the module.
pub const ENVIRONMENTS_DIR: &str = "deploy/terraform/environments";
/// The Terraform root of the rollout pipeline.
pub const ROLLOUT_DIR: &str = "deploy/terraform/rollout";
/// The custom-metrics dashboard.
pub const DASHBOARD: &str = "deploy/monitoring/dashboard.json";

/// Parses one HCL file.
pub fn parse_file(path: &Path) -> Result<Body> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    hcl::parse(&text).with_context(|| format!("parsing {}", path.display()))
}

/// The first block `identifier "labels"...` of `body`.
pub fn find_block<'a>(body: &'a Body, identifier: &str, labels: &[&str]) -> Option<&'a Block> {
    body.blocks().find(|block| {
        block.identifier() == identifier
            && block.labels().len() == labels.len()
            && block
                .labels()
                .iter()
                .zip(labels)
                .all(|(label, wanted)| label.as_str() == *wanted)
    })
}

/// Every block `identifier` directly in `body`.
pub fn blocks<'a>(body: &'a Body, identifier: &'a str) -> impl Iterator<Item = &'a Block> + 'a {
    body.blocks()
        .filter(move |block| block.identifier() == identifier)
}

/// The expression of attribute `key` of `body`.
pub fn attribute<'a>(body: &'a Body, key: &str) -> Option<&'a Expression> {
    body.attributes()
        .find(|attribute| attribute.key() == key)
        .map(|attribute| attribute.expr())
}

/// The expression of the local value `name`, searched in every `locals` block of `body`.
pub fn local<'a>(body: &'a Body, name: &str) -> Option<&'a Expression> {
    blocks(body, "locals").find_map(|block| attribute(block.body(), name))
}

/// The text of an object key (an identifier or a quoted string).
pub fn key_text(key: &ObjectKey) -> String {
    match key {
        ObjectKey::Identifier(ident) => ident.as_str().to_string(),
        ObjectKey::Expression(expr) => text(expr),
        other => other.to_string(),
    }
}

/// The member `key` of an object expression.
pub fn member<'a>(object: &'a Expression, key: &str) -> Option<&'a Expression> {
    match object {
        Expression::Object(members) => members
            .iter()
            .find(|(k, _)| key_text(k) == key)
            .map(|(_, value)| value),
        _ => None,
    }
}

/// An expression as text: a literal's value, a template's source (heredocs without their
/// common indentation), anything else formatted as HCL.
pub fn text(expr: &Expression) -> String {
    match expr {
        Expression::String(s) => s.clone(),
        Expression::Number(n) => n.to_string(),
        Expression::Bool(b) => b.to_string(),
        Expression::TemplateExpr(template) => match template.as_ref() {
            TemplateExpr::QuotedString(raw) => raw.replace("\\\"", "\"").replace("\\\\", "\\"),
            TemplateExpr::Heredoc(heredoc) => dedent(&heredoc.template),
        },
        other => hcl::format::to_string(other)
            .unwrap_or_else(|_| format!("{other:?}"))
            .trim()
            .to_string(),
    }
}

/// The items of an array expression, as text.
#[cfg(test)]
pub fn texts(expr: &Expression) -> Vec<String> {
    match expr {
        Expression::Array(items) => items.iter().map(text).collect(),
        _ => Vec::new(),
    }
}

/// Removes the indentation common to every non-blank line, and the trailing newline.
fn dedent(template: &str) -> String {
    let indent = template
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| line.len() - line.trim_start().len())
        .min()
        .unwrap_or(0);
    template
        .lines()
        .map(|line| line.get(indent..).unwrap_or("").trim_end())
        .collect::<Vec<_>>()
        .join("\n")
        .trim_end()
        .to_string()
}

/// One environment: its directory name and the literal arguments of its module call.
#[derive(Debug, Clone)]
pub struct Environment {
    /// The directory name under [`ENVIRONMENTS_DIR`].
    pub dir: String,
    /// The root module, parsed.
    #[cfg_attr(not(test), allow(dead_code))] // read by the deployment checks
    pub body: Body,
    /// The arguments given to the `telemetry-gateway` module, in file order.
    pub args: Vec<(String, Expression)>,
}

impl Environment {
    /// The literal value of module argument `key`.
    pub fn arg(&self, key: &str) -> Result<String> {
        let expr = self
            .args
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
            .with_context(|| format!("environment {}: no module argument {key}", self.dir))?;
        match expr {
            Expression::String(_) | Expression::Number(_) | Expression::Bool(_) => Ok(text(expr)),
            other => bail!(
                "environment {}: module argument {key} must be a literal value (the handbook reads it), found {}",
                self.dir,
                text(other)
            ),
        }
    }

    /// Module argument `key` as a number.
    pub fn number(&self, key: &str) -> Result<f64> {
        let value = self.arg(key)?;
        value.parse().with_context(|| {
            format!(
                "environment {}: {key} = {value:?} is not a number",
                self.dir
            )
        })
    }
}

/// Every environment under [`ENVIRONMENTS_DIR`], in name order, with the module call named
/// `telemetry_gateway` that each must contain.
pub fn environments(root: &Path) -> Result<Vec<Environment>> {
    let dir = root.join(ENVIRONMENTS_DIR);
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.path().join("main.tf").is_file())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    // dev before prod: the order releases go through.
    names.sort_by_key(|name| (name != "dev", name.clone()));
    names
        .into_iter()
        .map(|name| {
            let path: PathBuf = dir.join(&name).join("main.tf");
            let body = parse_file(&path)?;
            let args = module_args(&body)
                .with_context(|| format!("{}: no module \"telemetry_gateway\"", path.display()))?;
            Ok(Environment {
                dir: name,
                body,
                args,
            })
        })
        .collect()
}

/// The arguments of the module call named `telemetry_gateway`, in file order.
fn module_args(body: &Body) -> Option<Vec<(String, Expression)>> {
    let module = find_block(body, "module", &["telemetry_gateway"])?;
    Some(
        module
            .body()
            .attributes()
            .map(|a| (a.key().to_string(), a.expr().clone()))
            .collect(),
    )
}

/// One alert policy of `local.alert_policies` in the module's `monitoring.tf`.
#[derive(Debug, Clone)]
pub struct AlertPolicy {
    /// Its key in the map.
    pub key: String,
    /// `threshold` or `log_match`.
    pub kind: String,
    /// The name in Cloud Monitoring and the handbook.
    pub display_name: String,
    /// `CRITICAL`, `WARNING`, ...
    pub severity: String,
    /// Whether an environment gets it: `true`, or an expression over the module's variables.
    pub enabled: String,
    /// The metric type (threshold policies).
    pub metric: String,
    /// The rest of the filter: the log filter for log-match policies.
    pub filter: String,
    /// The per-series aligner.
    pub aligner: String,
    /// The cross-series reducer.
    pub reducer: String,
    /// The alignment window in seconds.
    pub period: String,
    /// How long the condition must hold, in seconds.
    pub duration: String,
    /// The threshold (greater than), as written.
    pub threshold: String,
    /// What it means and what to do.
    pub documentation: String,
}

/// The alert policies of one environment, in file order.
pub fn alert_policies(root: &Path) -> Result<Vec<AlertPolicy>> {
    let path = root.join(MODULE_DIR).join("monitoring.tf");
    let body = parse_file(&path)?;
    let Some(Expression::Object(policies)) = local(&body, "alert_policies") else {
        bail!("{}: no object local.alert_policies", path.display());
    };
    policies
        .iter()
        .map(|(key, policy)| {
            let key = key_text(key);
            let field = |name: &str| {
                member(policy, name)
                    .map(text)
                    .with_context(|| format!("alert policy {key}: no {name}"))
            };
            Ok(AlertPolicy {
                kind: field("kind")?,
                display_name: field("display_name")?,
                severity: field("severity")?,
                enabled: field("enabled")?,
                metric: field("metric")?,
                filter: field("filter")?,
                aligner: field("aligner")?,
                reducer: field("reducer")?,
                period: field("period")?,
                duration: field("duration")?,
                threshold: field("threshold")?,
                documentation: field("documentation")?,
                key,
            })
        })
        .collect()
}

impl AlertPolicy {
    /// Whether `environment` gets this policy: `enabled` is `true`, or `var.<name> > <number>`
    /// over the environment's module arguments.
    pub fn enabled_in(&self, environment: &Environment) -> Result<bool> {
        if self.enabled == "true" {
            return Ok(true);
        }
        if self.enabled == "false" {
            return Ok(false);
        }
        let parts: Vec<&str> = self.enabled.split_whitespace().collect();
        if let [variable, ">", number] = parts.as_slice()
            && let Some(name) = variable.strip_prefix("var.")
            && let Ok(limit) = number.parse::<f64>()
        {
            return Ok(environment.number(name)? > limit);
        }
        bail!(
            "alert policy {}: cannot evaluate enabled = {}",
            self.key,
            self.enabled
        )
    }

    /// The condition in words, for the handbook; `metric_prefix` replaces `${var.metric_prefix}`.
    pub fn condition(&self, metric_prefix: &str) -> String {
        const RUN_FILTER: &str = "${local.run_filter}";
        let on_service = " of the gateway's Cloud Run revisions";
        match self.kind.as_str() {
            "log_match" => {
                let rest = self
                    .filter
                    .strip_prefix(RUN_FILTER)
                    .map(|rest| rest.trim_start_matches(" AND "));
                match rest {
                    Some(rest) => {
                        format!("a log entry{on_service} matches `{}`", placeholders(rest))
                    }
                    None => format!("a log entry matches `{}`", placeholders(&self.filter)),
                }
            }
            _ => {
                let filter = match self.filter.as_str() {
                    "" => String::new(),
                    "local.run_filter" => on_service.to_string(),
                    other => format!(" where `{}`", placeholders(other)),
                };
                let held = match self.duration.as_str() {
                    "0" => String::new(),
                    d => format!(", for {d} s"),
                };
                let threshold = if self.threshold.parse::<f64>().is_ok() {
                    self.threshold.clone()
                } else {
                    format!("`{}`", self.threshold)
                };
                let metric = self.metric.replace("${var.metric_prefix}", metric_prefix);
                format!(
                    "`{metric}`{filter}: {} ({}) over {} s is above {threshold}{held}",
                    self.aligner, self.reducer, self.period,
                )
            }
        }
    }
}

/// The default of variable `name` in the module's `variables.tf`.
pub fn variable_default(root: &Path, name: &str) -> Result<String> {
    let path = root.join(MODULE_DIR).join("variables.tf");
    let body = parse_file(&path)?;
    find_block(&body, "variable", &[name])
        .and_then(|block| attribute(block.body(), "default"))
        .map(text)
        .with_context(|| format!("{}: no default of variable {name}", path.display()))
}

/// Replaces Terraform interpolations by readable placeholders: `${var.domain}` → `<domain>`.
pub fn placeholders(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            return out;
        };
        let inner = after[..end].trim();
        let name = inner.rsplit('.').next().unwrap_or(inner);
        out.push_str(&format!("<{name}>"));
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_name_what_terraform_interpolates() {
        for (text, expected) in [
            (
                "https://${var.domain}/-/healthz",
                "https://<domain>/-/healthz",
            ),
            (
                "id = \"${google_monitoring_uptime_check_config.healthz.uptime_check_id}\"",
                "id = \"<uptime_check_id>\"",
            ),
            (
                "${var.metric_prefix}x and ${local.y}",
                "<metric_prefix>x and <y>",
            ),
            ("no interpolation", "no interpolation"),
            ("unterminated ${var.x", "unterminated ${var.x"),
        ] {
            assert_eq!(placeholders(text), expected, "{text}");
        }
    }

    #[test]
    fn heredocs_lose_their_common_indentation() {
        assert_eq!(dedent("    a\n      b\n\n    c\n"), "a\n  b\n\nc");
    }

    fn environment(module_body: &str) -> Environment {
        let body = hcl::parse(&format!(
            "module \"telemetry_gateway\" {{\n{module_body}\n}}\n"
        ))
        .expect("parses");
        Environment {
            dir: "test".into(),
            args: module_args(&body).expect("a module call"),
            body,
        }
    }

    fn policy(enabled: &str) -> AlertPolicy {
        AlertPolicy {
            key: "k".into(),
            kind: "threshold".into(),
            display_name: "P".into(),
            severity: "WARNING".into(),
            enabled: enabled.into(),
            metric: "m".into(),
            filter: String::new(),
            aligner: "ALIGN_MAX".into(),
            reducer: "REDUCE_SUM".into(),
            period: "60".into(),
            duration: "0".into(),
            threshold: "1".into(),
            documentation: String::new(),
        }
    }

    #[test]
    fn a_policy_for_large_environments_is_evaluated_per_environment() {
        let policy = policy("var.max_instances > 5");
        let small = environment("max_instances = 5");
        let large = environment("max_instances = 6");
        assert!(!policy.enabled_in(&small).expect("evaluates"));
        assert!(policy.enabled_in(&large).expect("evaluates"));
        assert!(self::policy("true").enabled_in(&small).expect("evaluates"));
        assert!(
            self::policy("var.max_instances < 5")
                .enabled_in(&small)
                .is_err()
        );
    }

    #[test]
    fn a_computed_module_argument_is_refused_for_the_handbook() {
        let environment = environment("domain = var.domain");
        let err = environment.arg("domain").expect_err("not literal");
        assert!(err.to_string().contains("literal"), "{err}");
    }
}
