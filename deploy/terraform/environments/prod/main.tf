# The prod environment of the Telemetry Gateway. `cargo xtask handbook` reads the module's
# arguments below into docs/operations-handbook.md: keep them literal values. Provider versions
# are the module's (modules/telemetry-gateway/versions.tf).

terraform {
  required_version = ">= 1.5"
  backend "gcs" {
    bucket = "telemetry-gateway-prod-acae-tfstate"
    prefix = "telemetry-gateway/prod"
  }
}

provider "google" {
  project = "telemetry-gateway-prod-acae"
  region  = "us-central1"
}

variable "image" {
  description = "Image of the first deployment, e.g. us-central1-docker.pkg.dev/telemetry-gateway-prod-acae/images/telemetry-gateway:<version> (later releases come from Cloud Deploy)."
  type        = string
}

variable "sams_client_id" {
  description = "The gateway's SAMS client ID in this environment (its secret is in Secret Manager)."
  type        = string
}

variable "alert_emails" {
  description = "Email addresses that receive this environment's alerts, besides Slack."
  type        = list(string)
  default     = []
}

module "telemetry_gateway" {
  source = "../../modules/telemetry-gateway"

  environment         = "prod"
  category            = "external"
  project_id          = "telemetry-gateway-prod-acae"
  region              = "us-central1"
  domain              = "telemetry-gateway.sourcegraph.com"
  image               = var.image
  min_instances       = 2
  max_instances       = 20
  concurrency         = 100
  cpu                 = "1"
  memory_mib          = 1024
  slack_channel       = "alerts-telemetry-gateway-prod"
  alert_emails        = var.alert_emails
  sentry_project      = "telemetry-gateway-prod"
  sentry_organization = "sourcegraph"

  sams_server_url = "https://accounts.sourcegraph.com"
  sams_client_id  = var.sams_client_id

  deletion_protection = true
}

output "deploy_parameters" {
  description = "The Cloud Run manifest's deploy parameters, for the rollout pipeline."
  value       = module.telemetry_gateway.deploy_parameters
}

output "environment" {
  description = "What this environment is, for the handbook and the rollout pipeline."
  value       = module.telemetry_gateway.environment
}

output "service_account_email" {
  description = "The gateway's service account (the rollout deploys as it)."
  value       = module.telemetry_gateway.service_account_email
}
