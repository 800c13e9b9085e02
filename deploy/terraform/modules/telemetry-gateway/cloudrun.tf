# The Cloud Run service: the gateway (gRPC over HTTP/2 end to end, so an h2c port) and the
# OpenTelemetry Collector sidecar its metrics and traces go through.

locals {
  gateway_port = 10085

  # Every name is a setting of docs/configuration.md (a test in xtask checks it, and that
  # deploy/clouddeploy/service.yaml sets the same ones). Events go to Pub/Sub (the downstream
  # pipelines) and BigQuery (a queryable copy); an event is acknowledged once both accepted it.
  env = {
    MSP                                                 = "true"
    ENVIRONMENT_ID                                      = var.environment
    SRC_LOG_LEVEL                                       = "info"
    SRC_LOG_FORMAT                                      = "json_gcp"
    OTEL_EXPORTER_OTLP_ENDPOINT                         = "http://localhost:4317"
    TELEMETRY_GATEWAY_EVENTS_SINKS                      = "pubsub,bigquery"
    TELEMETRY_GATEWAY_EVENTS_PUBSUB_ENABLED             = "true"
    TELEMETRY_GATEWAY_EVENTS_PUBSUB_PROJECT_ID          = var.project_id
    TELEMETRY_GATEWAY_EVENTS_PUBSUB_TOPIC_ID            = google_pubsub_topic.events.name
    TELEMETRY_GATEWAY_EVENTS_DEADLETTER_PUBSUB_TOPIC_ID = google_pubsub_topic.dead_letters.name
    TELEMETRY_GATEWAY_EVENTS_BIGQUERY_PROJECT_ID        = var.project_id
    TELEMETRY_GATEWAY_EVENTS_BIGQUERY_DATASET_ID        = google_bigquery_dataset.events.dataset_id
    TELEMETRY_GATEWAY_EVENTS_BIGQUERY_TABLE_ID          = google_bigquery_table.events.table_id
    TELEMETRY_GATEWAY_MAX_INFLIGHT_BYTES                = tostring(local.max_inflight_bytes)
    # Every connection comes from Cloud Run's front end, which holds the senders' own: the
    # per-address limit (64 by default, for senders that connect directly) must not bind.
    TELEMETRY_GATEWAY_MAX_CONNECTIONS_PER_ADDRESS = "1024"
    # Cloud Run allows 10 s after SIGTERM: the drain, then up to 5 s to export the last traces
    # and metrics and 2 s for Sentry (docs/operations.md).
    TELEMETRY_GATEWAY_SHUTDOWN_TIMEOUT = "3s"
    TELEMETRY_GATEWAY_SAMS_SERVER_URL  = var.sams_server_url
    TELEMETRY_GATEWAY_SAMS_CLIENT_ID   = var.sams_client_id
  }
}

# The collector's configuration is not secret, but a secret is how Cloud Run mounts a file.
resource "google_secret_manager_secret" "otel_collector_config" {
  project   = var.project_id
  secret_id = "telemetry-gateway-otel-collector-config"
  labels    = local.labels
  replication {
    auto {}
  }
  depends_on = [google_project_service.apis]
}

resource "google_secret_manager_secret_version" "otel_collector_config" {
  secret      = google_secret_manager_secret.otel_collector_config.id
  secret_data = templatefile("${path.module}/otel-collector.yaml", { metric_prefix = var.metric_prefix })
}

resource "google_secret_manager_secret_iam_member" "collector_config_accessor" {
  project   = var.project_id
  secret_id = google_secret_manager_secret.otel_collector_config.secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = google_service_account.gateway.member
}

resource "google_cloud_run_v2_service" "gateway" {
  project             = var.project_id
  name                = local.service_name
  location            = var.region
  description         = "Telemetry Gateway (${var.environment})"
  labels              = local.labels
  deletion_protection = var.deletion_protection
  # Senders are Sourcegraph instances on the internet; the gateway authenticates each itself.
  ingress = "INGRESS_TRAFFIC_ALL"

  template {
    service_account                  = google_service_account.gateway.email
    timeout                          = "${var.request_timeout_seconds}s"
    max_instance_request_concurrency = var.concurrency
    execution_environment            = "EXECUTION_ENVIRONMENT_GEN2"
    labels                           = local.labels

    scaling {
      min_instance_count = var.min_instances
      max_instance_count = var.max_instances
    }

    containers {
      name       = "gateway"
      image      = var.image
      depends_on = ["otel-collector"]

      # h2c: Cloud Run forwards HTTP/2 without TLS, which gRPC streaming needs.
      ports {
        name           = "h2c"
        container_port = local.gateway_port
      }

      resources {
        limits = {
          cpu    = var.cpu
          memory = "${var.memory_mib}Mi"
        }
        # CPU between requests: streams stay open, and metrics are exported in the background.
        cpu_idle          = false
        startup_cpu_boost = true
      }

      dynamic "env" {
        for_each = local.env
        content {
          name  = env.key
          value = env.value
        }
      }

      dynamic "env" {
        for_each = google_secret_manager_secret.gateway
        content {
          name = env.key
          value_source {
            secret_key_ref {
              secret  = env.value.secret_id
              version = "latest"
            }
          }
        }
      }

      # Ready once the sink passed a health check (docs/operations.md).
      startup_probe {
        http_get {
          path = "/-/ready"
          port = local.gateway_port
        }
        initial_delay_seconds = 0
        period_seconds        = 2
        timeout_seconds       = 2
        failure_threshold     = 30
      }

      # Alive while the process serves HTTP, whatever the sink or the memory budget say:
      # restarting an instance would not fix either.
      liveness_probe {
        http_get {
          path = "/-/live"
          port = local.gateway_port
        }
        period_seconds    = 15
        timeout_seconds   = 5
        failure_threshold = 4
      }
    }

    containers {
      name  = "otel-collector"
      image = var.otel_collector_image
      args  = ["--config=/etc/otelcol-google/config.yaml"]

      resources {
        limits = {
          cpu    = "1"
          memory = "256Mi"
        }
        cpu_idle = false
      }

      volume_mounts {
        name       = "otel-collector-config"
        mount_path = "/etc/otelcol-google/"
      }

      startup_probe {
        http_get {
          path = "/"
          port = 13133
        }
        period_seconds    = 2
        timeout_seconds   = 2
        failure_threshold = 15
      }

      liveness_probe {
        http_get {
          path = "/"
          port = 13133
        }
        period_seconds    = 30
        timeout_seconds   = 5
        failure_threshold = 3
      }
    }

    volumes {
      name = "otel-collector-config"
      secret {
        secret = google_secret_manager_secret.otel_collector_config.secret_id
        items {
          version = "latest"
          path    = "config.yaml"
        }
      }
    }
  }

  traffic {
    type    = "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST"
    percent = 100
  }

  lifecycle {
    # Releases (new images) come from Cloud Deploy (deploy/clouddeploy/); Terraform owns the rest.
    ignore_changes = [
      template[0].containers[0].image,
      client,
      client_version,
    ]
  }

  depends_on = [
    google_secret_manager_secret_iam_member.gateway_accessor,
    google_secret_manager_secret_iam_member.collector_config_accessor,
    google_secret_manager_secret_version.diagnostics,
    google_secret_manager_secret_version.otel_collector_config,
  ]
}

# Anyone may call the service: senders authenticate with license keys and SAMS tokens, which the
# gateway checks itself.
resource "google_cloud_run_v2_service_iam_member" "public_invoker" {
  project  = var.project_id
  location = google_cloud_run_v2_service.gateway.location
  name     = google_cloud_run_v2_service.gateway.name
  role     = "roles/run.invoker"
  member   = "allUsers"
}

# The environment's own domain (verified for the project beforehand: deploy/README.md).
resource "google_cloud_run_domain_mapping" "gateway" {
  project  = var.project_id
  location = var.region
  name     = var.domain
  metadata {
    namespace = var.project_id
    labels    = local.labels
  }
  spec {
    route_name = google_cloud_run_v2_service.gateway.name
  }
}
