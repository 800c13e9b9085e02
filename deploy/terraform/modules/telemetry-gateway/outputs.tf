output "service_name" {
  description = "Name of the Cloud Run service."
  value       = google_cloud_run_v2_service.gateway.name
}

output "service_uri" {
  description = "The run.app URL of the service (senders use the domain)."
  value       = google_cloud_run_v2_service.gateway.uri
}

output "service_account_email" {
  description = "The gateway's service account."
  value       = google_service_account.gateway.email
}

output "topic" {
  description = "The Pub/Sub topic events are published to."
  value       = google_pubsub_topic.events.id
}

output "events_table" {
  description = "The BigQuery table events are inserted into."
  value       = "${var.project_id}.${google_bigquery_dataset.events.dataset_id}.${google_bigquery_table.events.table_id}"
}

output "uptime_check_id" {
  description = "ID of the external uptime check."
  value       = google_monitoring_uptime_check_config.healthz.uptime_check_id
}

output "dashboard_id" {
  description = "The custom-metrics dashboard."
  value       = google_monitoring_dashboard.custom_metrics.id
}

# Cloud Deploy renders deploy/clouddeploy/service.yaml with these (deploy/terraform/rollout), so a
# release carries the configuration Terraform gave the service.
output "deploy_parameters" {
  description = "Values of the Cloud Run manifest's deploy parameters for this environment."
  value = merge(
    local.env,
    {
      environment          = var.environment
      category             = var.category
      project_id           = var.project_id
      region               = var.region
      service_account      = google_service_account.gateway.email
      min_instances        = tostring(var.min_instances)
      max_instances        = tostring(var.max_instances)
      concurrency          = tostring(var.concurrency)
      cpu                  = var.cpu
      memory               = "${var.memory_mib}Mi"
      timeout_seconds      = tostring(var.request_timeout_seconds)
      otel_collector_image = var.otel_collector_image
      collector_config     = google_secret_manager_secret.otel_collector_config.secret_id
    },
  )
}

output "environment" {
  description = "The environment's name, category, project, domain and where its alerts and errors go."
  value = {
    name           = var.environment
    category       = var.category
    project_id     = var.project_id
    region         = var.region
    domain         = var.domain
    slack_channel  = var.slack_channel
    sentry_project = var.sentry_project
  }
}
