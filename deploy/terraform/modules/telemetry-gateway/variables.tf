# Inputs of one environment of the Telemetry Gateway. `cargo xtask handbook` reads the values the
# environments give them (deploy/terraform/environments/*/main.tf) into
# docs/operations-handbook.md.

variable "environment" {
  description = "Environment name (dev, prod): ENVIRONMENT_ID, resource labels, the Sentry environment."
  type        = string
}

variable "category" {
  description = "Environment category, as in the handbook: test, internal or external."
  type        = string
  validation {
    condition     = contains(["test", "internal", "external"], var.category)
    error_message = "category must be test, internal or external."
  }
}

variable "project_id" {
  description = "The Google Cloud project of this environment (one project per environment)."
  type        = string
}

variable "region" {
  description = "Region of the Cloud Run service (it must support Cloud Run domain mappings)."
  type        = string
  default     = "us-central1"
}

variable "domain" {
  description = "Public domain of the service (mapped to Cloud Run; the uptime check targets it)."
  type        = string
}

variable "image" {
  description = "Container image of the first deployment; releases after it come from Cloud Deploy."
  type        = string
}

variable "min_instances" {
  description = "Minimum number of Cloud Run instances (keep >= 1: senders stream continuously)."
  type        = number
  default     = 1
}

variable "max_instances" {
  description = "Maximum number of Cloud Run instances; above 5 the instance-count alert is created."
  type        = number
  default     = 10
}

variable "concurrency" {
  description = "Requests (gRPC streams and calls) one instance serves at once."
  type        = number
  default     = 100
}

variable "cpu" {
  description = "vCPUs of the gateway container."
  type        = string
  default     = "1"
}

variable "memory_mib" {
  description = "Memory of the gateway container in MiB; half of it becomes TELEMETRY_GATEWAY_MAX_INFLIGHT_BYTES."
  type        = number
  default     = 1024
}

variable "request_timeout_seconds" {
  description = "Cloud Run request timeout: the longest a RecordEvents stream may stay open."
  type        = number
  default     = 900
}

variable "sams_server_url" {
  description = "SAMS URL for managed-service tokens (TELEMETRY_GATEWAY_SAMS_SERVER_URL)."
  type        = string
}

variable "sams_client_id" {
  description = "SAMS client ID of the gateway (the secret is in Secret Manager)."
  type        = string
}

variable "slack_channel" {
  description = "Slack channel alerts go to (without #), through the project's Slack notification channel."
  type        = string
}

variable "slack_auth_token_secret" {
  description = "Secret Manager secret ID in this project holding the Slack app token for the notification channel."
  type        = string
  default     = "slack-alerts-token"
}

variable "alert_emails" {
  description = "Email addresses alerts also go to."
  type        = list(string)
  default     = []
}

variable "sentry_project" {
  description = "Sentry project the gateway reports errors to (its DSN is in Secret Manager)."
  type        = string
}

variable "sentry_organization" {
  description = "Sentry organization of sentry_project, for links."
  type        = string
  default     = "sourcegraph"
}

variable "otel_collector_image" {
  description = "Image of the OpenTelemetry Collector sidecar that sends metrics and traces to Cloud Monitoring and Cloud Trace."
  type        = string
  default     = "us-docker.pkg.dev/cloud-ops-agents-artifacts/google-cloud-opentelemetry-collector/otelcol-google:0.122.0"
}

variable "metric_prefix" {
  description = "Prefix the collector gives the gateway's metrics in Cloud Monitoring."
  type        = string
  default     = "workload.googleapis.com/"
}

variable "bigquery_location" {
  description = "Location of the events dataset."
  type        = string
  default     = "US"
}

variable "deletion_protection" {
  description = "Protect the Cloud Run service against terraform destroy (the events table always is)."
  type        = bool
  default     = true
}
