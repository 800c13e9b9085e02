# The Telemetry Gateway in one environment: its identity, the Pub/Sub topic and BigQuery table
# events go to, its secrets, the Cloud Run service, and how it is watched (monitoring.tf).

locals {
  service_name = "telemetry-gateway"
  labels = {
    service     = local.service_name
    environment = var.environment
    category    = var.category
  }
  # Half the container for event payloads in flight, as the gateway's default (256 MiB for a
  # 512 MiB container): the rest is the runtime, connections and the sinks' buffers.
  max_inflight_bytes = floor(var.memory_mib * 1024 * 1024 / 2)
}

data "google_project" "this" {
  project_id = var.project_id
}

resource "google_project_service" "apis" {
  for_each = toset([
    "bigquery.googleapis.com",
    "cloudtrace.googleapis.com",
    "iam.googleapis.com",
    "monitoring.googleapis.com",
    "pubsub.googleapis.com",
    "run.googleapis.com",
    "secretmanager.googleapis.com",
  ])
  project            = var.project_id
  service            = each.value
  disable_on_destroy = false
}

# The gateway's own identity, with only what it uses.
resource "google_service_account" "gateway" {
  project      = var.project_id
  account_id   = local.service_name
  display_name = "Telemetry Gateway (${var.environment})"
}

resource "google_pubsub_topic_iam_member" "gateway_publisher" {
  project = var.project_id
  topic   = google_pubsub_topic.events.name
  role    = "roles/pubsub.publisher"
  member  = google_service_account.gateway.member
}

# The health check reads the topic's metadata (does it exist?).
resource "google_pubsub_topic_iam_member" "gateway_viewer" {
  project = var.project_id
  topic   = google_pubsub_topic.events.name
  role    = "roles/pubsub.viewer"
  member  = google_service_account.gateway.member
}

resource "google_bigquery_table_iam_member" "gateway_data_editor" {
  project    = var.project_id
  dataset_id = google_bigquery_dataset.events.dataset_id
  table_id   = google_bigquery_table.events.table_id
  role       = "roles/bigquery.dataEditor"
  member     = google_service_account.gateway.member
}

resource "google_secret_manager_secret_iam_member" "gateway_accessor" {
  for_each  = google_secret_manager_secret.gateway
  project   = var.project_id
  secret_id = each.value.secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = google_service_account.gateway.member
}

resource "google_project_iam_member" "gateway_metric_writer" {
  project = var.project_id
  role    = "roles/monitoring.metricWriter"
  member  = google_service_account.gateway.member
}

resource "google_project_iam_member" "gateway_trace_agent" {
  project = var.project_id
  role    = "roles/cloudtrace.agent"
  member  = google_service_account.gateway.member
}

resource "google_pubsub_topic" "events" {
  project                    = var.project_id
  name                       = "telemetry-gateway-events"
  labels                     = local.labels
  message_retention_duration = "86400s"
  depends_on                 = [google_project_service.apis]
}

# Events refused for good (invalid, unrenderable, oversized, refused by policy, rejected by a sink)
# are also published here with their reason, for debugging "missing events" and for `replay`
# (docs/operations.md, "Dead letters"). Best effort: never on the acknowledgement path.
resource "google_pubsub_topic" "dead_letters" {
  project                    = var.project_id
  name                       = "telemetry-gateway-events-deadletter"
  labels                     = local.labels
  message_retention_duration = "604800s"
  depends_on                 = [google_project_service.apis]
}

resource "google_pubsub_topic_iam_member" "gateway_dead_letter_publisher" {
  project = var.project_id
  topic   = google_pubsub_topic.dead_letters.name
  role    = "roles/pubsub.publisher"
  member  = google_service_account.gateway.member
}

resource "google_bigquery_dataset" "events" {
  project                    = var.project_id
  dataset_id                 = "telemetry_gateway"
  friendly_name              = "Telemetry Gateway events"
  location                   = var.bigquery_location
  labels                     = local.labels
  delete_contents_on_destroy = false
  depends_on                 = [google_project_service.apis]
}

# One row per event (deploy/bigquery/events.schema.json), partitioned by the day of the event and
# clustered by what it records, the usual filters of analytics queries.
resource "google_bigquery_table" "events" {
  project    = var.project_id
  dataset_id = google_bigquery_dataset.events.dataset_id
  table_id   = "events"
  schema     = file("${path.module}/../../../bigquery/events.schema.json")
  labels     = local.labels
  clustering = ["feature", "action"]
  # Events are data: protected in every environment, whatever var.deletion_protection says.
  deletion_protection = true
  time_partitioning {
    type  = "DAY"
    field = "event_timestamp"
  }
}

# Secrets: Terraform creates them; their values are never in code. DIAGNOSTICS_SECRET is
# generated here (the uptime check needs it); the SAMS client secret and the Sentry DSN are added
# by an operator (deploy/README.md).
resource "google_secret_manager_secret" "gateway" {
  for_each = {
    DIAGNOSTICS_SECRET                   = "telemetry-gateway-diagnostics-secret" # checkov:skip=CKV_SECRET_6: a secret's ID
    TELEMETRY_GATEWAY_SAMS_CLIENT_SECRET = "telemetry-gateway-sams-client-secret" # checkov:skip=CKV_SECRET_6: a secret's ID
    SENTRY_DSN                           = "telemetry-gateway-sentry-dsn"
  }
  project   = var.project_id
  secret_id = each.value
  labels    = local.labels
  replication {
    auto {}
  }
  depends_on = [google_project_service.apis]
}

resource "random_password" "diagnostics" {
  length  = 48
  special = false
}

resource "google_secret_manager_secret_version" "diagnostics" {
  secret      = google_secret_manager_secret.gateway["DIAGNOSTICS_SECRET"].id
  secret_data = random_password.diagnostics.result
}
