# How an environment is watched: notification channels, the alert policies of the operations
# handbook (docs/operations-handbook.md is generated from `local.alert_policies` by
# `cargo xtask handbook`), the external uptime check, and the custom-metrics dashboard.

locals {
  run_filter = "resource.type = \"cloud_run_revision\" AND resource.labels.service_name = \"${local.service_name}\""

  # Every alert policy of an environment: the original's seven, then ours from the gateway's own
  # metrics. `kind` is `threshold` (on a metric) or `log_match`; `period` is the alignment window
  # and `duration` how long the condition must hold, in seconds; ALIGN_RATE thresholds are per
  # second. `enabled` is false for a policy this environment does not get.
  alert_policies = {
    cpu = {
      kind          = "threshold"
      display_name  = "High Container CPU Utilization"
      severity      = "WARNING"
      enabled       = true
      metric        = "run.googleapis.com/container/cpu/utilizations"
      filter        = local.run_filter
      aligner       = "ALIGN_PERCENTILE_99"
      reducer       = "REDUCE_NONE"
      group_by      = []
      period        = 300
      duration      = 0
      threshold     = 0.8
      documentation = <<-EOT
        High CPU usage: the 99th percentile of the gateway's container CPU utilisation was above 80% over 5 minutes.
        It may be necessary to reduce load or increase CPU allocation: check the request rate and the instance count on the dashboard; if instances are at their maximum, raise `max_instances`, otherwise raise `cpu` (deploy/terraform) and apply.
      EOT
    }
    memory = {
      kind          = "threshold"
      display_name  = "High Container Memory Utilization"
      severity      = "WARNING"
      enabled       = true
      metric        = "run.googleapis.com/container/memory/utilizations"
      filter        = local.run_filter
      aligner       = "ALIGN_PERCENTILE_99"
      reducer       = "REDUCE_NONE"
      group_by      = []
      period        = 300
      duration      = 0
      threshold     = 0.8
      documentation = <<-EOT
        High memory usage: the 99th percentile of the gateway's container memory utilisation was above 80% over 5 minutes.
        Event payloads in flight are bounded by TELEMETRY_GATEWAY_MAX_INFLIGHT_BYTES (half the container's memory): check the "bytes in flight" panel. If it is near the limit, the load is the cause: raise `max_instances` or `memory_mib` (the budget follows). If it is low while memory is high, memory is used elsewhere (open streams, a sink's buffers): report it with the instance's logs.
      EOT
    }
    startup_latency = {
      kind          = "threshold"
      display_name  = "Container Startup Latency"
      severity      = "WARNING"
      enabled       = true
      metric        = "run.googleapis.com/container/startup_latencies"
      filter        = local.run_filter
      aligner       = "ALIGN_PERCENTILE_99"
      reducer       = "REDUCE_NONE"
      group_by      = []
      period        = 60
      duration      = 0
      threshold     = 10000
      documentation = <<-EOT
        Service containers are taking longer than configured timeouts to start up (99th percentile above 10 s over a minute).
        The startup probe waits for /-/ready, which turns 200 once the sink passed one health check: a slow or failing Pub/Sub or BigQuery check delays it. Read the start-up logs of new instances ("starting: ..." reasons), check the sink's health (/-/healthz) and the Cloud Run revision's status.
      EOT
    }
    instance_count = {
      kind          = "threshold"
      display_name  = "Container Instance Count"
      severity      = "WARNING"
      enabled       = var.max_instances > 5
      metric        = "run.googleapis.com/container/instance_count"
      filter        = local.run_filter
      aligner       = "ALIGN_MAX"
      reducer       = "REDUCE_SUM"
      group_by      = []
      period        = 60
      duration      = 0
      threshold     = floor(var.max_instances * 0.8)
      documentation = <<-EOT
        There are a lot of Cloud Run instances running (over 80% of the configured maximum within a minute): we may need to increase per-instance concurrency or make sure we won't hit the configured max instance count.
        Check the request rate and per-instance CPU and memory on the dashboard; raise `max_instances` or `concurrency` (deploy/terraform) and apply.
      EOT
    }
    pending_requests = {
      kind          = "threshold"
      display_name  = "Cloud Run Pending Requests"
      severity      = "WARNING"
      enabled       = true
      metric        = "run.googleapis.com/pending_queue/pending_requests"
      filter        = local.run_filter
      aligner       = "ALIGN_SUM"
      reducer       = "REDUCE_SUM"
      group_by      = []
      period        = 60
      duration      = 0
      threshold     = 5
      documentation = <<-EOT
        There are requests pending (more than 5 within a minute): we may need to increase the Cloud Run instance count or request concurrency, or investigate further.
        Pending requests wait for an instance with a free slot: check whether instances are at `max_instances` or their streams at `concurrency`, and raise the one that binds.
      EOT
    }
    instance_precondition_failed = {
      kind         = "log_match"
      display_name = "Cloud Run Instance Precondition Failed"
      severity     = "WARNING"
      enabled      = true
      metric       = ""
      # Cloud Run logs an instance that could not start because something it needs (the image,
      # a secret version, a volume) was missing as a failed-precondition error.
      filter        = "${local.run_filter} AND severity >= ERROR AND (protoPayload.status.code = 9 OR textPayload:\"FAILED_PRECONDITION\" OR jsonPayload.message:\"failed precondition\")"
      aligner       = ""
      reducer       = ""
      group_by      = []
      period        = 0
      duration      = 0
      threshold     = 0
      documentation = <<-EOT
        Cloud Run instance failed to start due to a precondition failure.
        This is unlikely to cause immediate downtime, and may auto-resolve if no new instances are created and/or we return to a healthy state, but you should follow up to ensure the latest Cloud Run revision is healthy: check that the image exists, that every secret the service reads has a version the service account may access, and the revision's status in the console.
      EOT
    }
    external_uptime_check = {
      kind          = "threshold"
      display_name  = "External Uptime Check"
      severity      = "CRITICAL"
      enabled       = true
      metric        = "monitoring.googleapis.com/uptime_check/check_passed"
      filter        = "metric.label.check_id = \"${google_monitoring_uptime_check_config.healthz.uptime_check_id}\" AND resource.type = \"uptime_url\""
      aligner       = "ALIGN_NEXT_OLDER"
      reducer       = "REDUCE_COUNT_FALSE"
      group_by      = ["resource.label.*"]
      period        = 60
      duration      = 60
      threshold     = 1
      documentation = <<-EOT
        Service is failing to respond on https://${var.domain}/-/healthz (from more than one checker region): this may be expected if the service was recently provisioned or if its external domain has changed.
        Senders cannot deliver events meanwhile (they keep and retry them). Check the Cloud Run service and its latest revision, the domain mapping and its certificate, and the body of /-/healthz ("healthz: <error>" names the failing sink check).
      EOT
    }
    publish_failures = {
      kind          = "threshold"
      display_name  = "Telemetry Gateway Publish Failures"
      severity      = "WARNING"
      enabled       = true
      metric        = "${var.metric_prefix}telemetry-gateway.sink.events"
      filter        = "metric.label.outcome != \"delivered\""
      aligner       = "ALIGN_RATE"
      reducer       = "REDUCE_SUM"
      group_by      = ["metric.label.sink", "metric.label.outcome"]
      period        = 300
      duration      = 300
      threshold     = 1
      documentation = <<-EOT
        Events are failing to reach a sink (more than 1 event/s not delivered, sustained for 5 minutes). `retryable` failures are not acknowledged, so senders retry them; `permanent` ones are reported to Sentry.
        Check /-/healthz, the sink latency panel and the error logs (`failed to publish`): a missing topic or table, lost permissions of the service account, or a Pub/Sub or BigQuery outage. Senders keep their events until the gateway acknowledges them.
      EOT
    }
    events_dropped = {
      kind          = "threshold"
      display_name  = "Telemetry Gateway Events Dropped"
      severity      = "WARNING"
      enabled       = true
      metric        = "${var.metric_prefix}telemetry-gateway.events.dropped"
      filter        = ""
      aligner       = "ALIGN_RATE"
      reducer       = "REDUCE_SUM"
      group_by      = ["metric.label.reason"]
      period        = 900
      duration      = 900
      threshold     = 5
      documentation = <<-EOT
        Events are being acknowledged without being forwarded (more than 5 events/s for one reason, sustained for 15 minutes). Reasons: `invalid` (failed validation), `oversized` (10 MB or more), `policy` (the license's export tags exclude them), `rejected` (the sink refused them for good).
        A new sender release emitting bad events is the usual cause: find the source in the logs and Sentry (feature, action and event ID are tagged), and raise it with the team that owns the sender. `policy` drops follow license tags and are expected in bulk only after a licensing change.
      EOT
    }
    memory_budget_refusals = {
      kind          = "threshold"
      display_name  = "Telemetry Gateway Memory Budget Refusals"
      severity      = "WARNING"
      enabled       = true
      metric        = "${var.metric_prefix}telemetry-gateway.payloads.refused"
      filter        = "metric.label.reason = \"memory_budget\""
      aligner       = "ALIGN_RATE"
      reducer       = "REDUCE_SUM"
      group_by      = []
      period        = 300
      duration      = 300
      threshold     = 0.1
      documentation = <<-EOT
        Payloads are being refused because instances are over their memory budget for events in flight (TELEMETRY_GATEWAY_MAX_INFLIGHT_BYTES), more than one every 10 s for 5 minutes. Senders retry them later, so nothing is lost yet, but delivery is delayed.
        Check the "bytes in flight" and sink latency panels: a slow sink holds payloads longer (fix the sink), otherwise the load outgrew the instances: raise `max_instances` or `memory_mib`.
      EOT
    }
    auth_failures = {
      kind          = "threshold"
      display_name  = "Telemetry Gateway Authentication Failure Spike"
      severity      = "WARNING"
      enabled       = true
      metric        = "${var.metric_prefix}telemetry-gateway.auth.failures"
      filter        = ""
      aligner       = "ALIGN_RATE"
      reducer       = "REDUCE_SUM"
      group_by      = ["metric.label.reason"]
      period        = 300
      duration      = 300
      threshold     = 5
      documentation = <<-EOT
        Many senders are being refused authentication (more than 5 streams or calls per second for one reason over 5 minutes).
        `invalid_license_key` in bulk: a wrong TELEMETRY_GATEWAY_LICENSE_PUBLIC_KEY, or an abusive sender. `token_check_failed`: SAMS is unreachable or its credentials are wrong (check the SAMS client secret). `permission_denied`: a managed service lacks the events-writer scope. Find the senders in the logs and act on the reason.
      EOT
    }
  }

  enabled_alert_policies = { for key, policy in local.alert_policies : key => policy if policy.enabled }

  notification_channels = concat(
    [google_monitoring_notification_channel.slack.id],
    [for channel in google_monitoring_notification_channel.email : channel.id],
  )
}

data "google_secret_manager_secret_version" "slack_token" {
  project = var.project_id
  secret  = var.slack_auth_token_secret
}

resource "google_monitoring_notification_channel" "slack" {
  project      = var.project_id
  display_name = "Slack #${var.slack_channel}"
  type         = "slack"
  labels = {
    channel_name = "#${var.slack_channel}"
  }
  sensitive_labels {
    auth_token = data.google_secret_manager_secret_version.slack_token.secret_data
  }
  depends_on = [google_project_service.apis]
}

resource "google_monitoring_notification_channel" "email" {
  for_each     = toset(var.alert_emails)
  project      = var.project_id
  display_name = "Email ${each.value}"
  type         = "email"
  labels = {
    email_address = each.value
  }
  depends_on = [google_project_service.apis]
}

resource "google_monitoring_alert_policy" "policy" {
  for_each              = local.enabled_alert_policies
  project               = var.project_id
  display_name          = each.value.display_name
  severity              = each.value.severity
  combiner              = "OR"
  notification_channels = local.notification_channels
  user_labels           = local.labels

  conditions {
    display_name = each.value.display_name

    dynamic "condition_threshold" {
      for_each = each.value.kind == "threshold" ? [each.value] : []
      content {
        filter          = join(" AND ", compact(["metric.type = \"${condition_threshold.value.metric}\"", condition_threshold.value.filter]))
        comparison      = "COMPARISON_GT"
        threshold_value = condition_threshold.value.threshold
        duration        = "${condition_threshold.value.duration}s"
        aggregations {
          alignment_period     = "${condition_threshold.value.period}s"
          per_series_aligner   = condition_threshold.value.aligner
          cross_series_reducer = condition_threshold.value.reducer
          group_by_fields      = condition_threshold.value.group_by
        }
        trigger {
          count = 1
        }
      }
    }

    dynamic "condition_matched_log" {
      for_each = each.value.kind == "log_match" ? [each.value] : []
      content {
        filter = condition_matched_log.value.filter
      }
    }
  }

  documentation {
    content   = "${each.value.documentation}\nEnvironment: ${var.environment} (project ${var.project_id}). Handbook: docs/operations-handbook.md."
    mime_type = "text/markdown"
  }

  alert_strategy {
    auto_close = "1800s"
    # Log-match conditions must say how often they may notify.
    dynamic "notification_rate_limit" {
      for_each = each.value.kind == "log_match" ? [300] : []
      content {
        period = "${notification_rate_limit.value}s"
      }
    }
  }

  depends_on = [google_project_service.apis]
}

# The external check: `/-/healthz` on the environment's domain, with the diagnostics secret. It
# passes only when the gateway answers and its sink's health check passes.
resource "google_monitoring_uptime_check_config" "healthz" {
  project      = var.project_id
  display_name = "telemetry-gateway ${var.environment} /-/healthz"
  timeout      = "10s"
  period       = "60s"
  checker_type = "STATIC_IP_CHECKERS"

  http_check {
    path           = "/-/healthz"
    port           = 443
    use_ssl        = true
    validate_ssl   = true
    request_method = "GET"
    mask_headers   = true
    headers = {
      Authorization = "Bearer ${random_password.diagnostics.result}"
    }
    accepted_response_status_codes {
      status_class = "STATUS_CLASS_2XX"
    }
  }

  content_matchers {
    content = "healthz: ok"
    matcher = "CONTAINS_STRING"
  }

  monitored_resource {
    type = "uptime_url"
    labels = {
      project_id = var.project_id
      host       = var.domain
    }
  }

  depends_on = [google_project_service.apis]
}

resource "google_monitoring_dashboard" "custom_metrics" {
  project        = var.project_id
  dashboard_json = replace(file("${path.module}/../../../monitoring/dashboard.json"), "workload.googleapis.com/", var.metric_prefix)
  depends_on     = [google_project_service.apis]
}
