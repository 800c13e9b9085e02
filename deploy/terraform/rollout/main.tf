# The rollout: a Cloud Deploy delivery pipeline, in the prod project, that delivers every release
# to dev and promotes it to prod by hand (prod requires approval). Apply after both environments:
# it reads their Terraform outputs (the service account and the manifest's deploy parameters).

terraform {
  required_version = ">= 1.5"
  backend "gcs" {
    bucket = "telemetry-gateway-prod-acae-tfstate"
    prefix = "telemetry-gateway/rollout"
  }
  required_providers {
    google = {
      source  = "hashicorp/google"
      version = ">= 6.20, < 8"
    }
  }
}

locals {
  project_id = "telemetry-gateway-prod-acae"
  region     = "us-central1"
  stages = {
    dev  = data.terraform_remote_state.dev.outputs
    prod = data.terraform_remote_state.prod.outputs
  }
}

provider "google" {
  project = local.project_id
  region  = local.region
}

data "terraform_remote_state" "dev" {
  backend = "gcs"
  config = {
    bucket = "telemetry-gateway-dev-0050-tfstate"
    prefix = "telemetry-gateway/dev"
  }
}

data "terraform_remote_state" "prod" {
  backend = "gcs"
  config = {
    bucket = "telemetry-gateway-prod-acae-tfstate"
    prefix = "telemetry-gateway/prod"
  }
}

resource "google_project_service" "apis" {
  for_each           = toset(["artifactregistry.googleapis.com", "clouddeploy.googleapis.com"])
  project            = local.project_id
  service            = each.value
  disable_on_destroy = false
}

# Images of every release, pulled by both environments' Cloud Run.
resource "google_artifact_registry_repository" "images" {
  project       = local.project_id
  location      = local.region
  repository_id = "images"
  format        = "DOCKER"
  description   = "Telemetry Gateway images"
  docker_config {
    immutable_tags = true
  }
  depends_on = [google_project_service.apis]
}

data "google_project" "stage" {
  for_each   = local.stages
  project_id = each.value.environment.project_id
}

resource "google_artifact_registry_repository_iam_member" "run_pulls" {
  for_each   = data.google_project.stage
  project    = local.project_id
  location   = local.region
  repository = google_artifact_registry_repository.images.name
  role       = "roles/artifactregistry.reader"
  member     = "serviceAccount:service-${each.value.number}@serverless-robot-prod.iam.gserviceaccount.com"
}

# Cloud Deploy renders and deploys as this account: it may deploy Cloud Run services in both
# projects and run them as the gateway's account, nothing else.
resource "google_service_account" "deployer" {
  project      = local.project_id
  account_id   = "telemetry-gateway-deployer"
  display_name = "Telemetry Gateway rollout (Cloud Deploy)"
}

resource "google_project_iam_member" "deployer_job_runner" {
  project = local.project_id
  role    = "roles/clouddeploy.jobRunner"
  member  = google_service_account.deployer.member
}

resource "google_project_iam_member" "deployer_run_developer" {
  for_each = local.stages
  project  = each.value.environment.project_id
  role     = "roles/run.developer"
  member   = google_service_account.deployer.member
}

resource "google_service_account_iam_member" "deployer_acts_as_gateway" {
  for_each           = local.stages
  service_account_id = "projects/${each.value.environment.project_id}/serviceAccounts/${each.value.service_account_email}"
  role               = "roles/iam.serviceAccountUser"
  member             = google_service_account.deployer.member
}

resource "google_clouddeploy_target" "stage" {
  for_each    = local.stages
  project     = local.project_id
  location    = local.region
  name        = "telemetry-gateway-${each.key}"
  description = "Telemetry Gateway ${each.key} (${each.value.environment.project_id})"
  # Every release reaches dev; prod waits for an approval.
  require_approval  = each.key == "prod"
  deploy_parameters = each.value.deploy_parameters

  run {
    location = "projects/${each.value.environment.project_id}/locations/${each.value.environment.region}"
  }

  execution_configs {
    usages          = ["RENDER", "DEPLOY"]
    service_account = google_service_account.deployer.email
  }

  depends_on = [google_project_service.apis]
}

resource "google_clouddeploy_delivery_pipeline" "rollout" {
  project     = local.project_id
  location    = local.region
  name        = "telemetry-gateway-${local.region}-rollout"
  description = "Telemetry Gateway: every release to dev, promoted to prod by hand"

  serial_pipeline {
    stages {
      target_id = google_clouddeploy_target.stage["dev"].name
    }
    stages {
      target_id = google_clouddeploy_target.stage["prod"].name
    }
  }
}

output "delivery_pipeline" {
  description = "The delivery pipeline releases are created in."
  value       = google_clouddeploy_delivery_pipeline.rollout.name
}

output "image_repository" {
  description = "Where release images are pushed."
  value       = "${local.region}-docker.pkg.dev/${local.project_id}/${google_artifact_registry_repository.images.repository_id}"
}
