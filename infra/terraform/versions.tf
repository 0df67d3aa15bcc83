terraform {
  required_version = ">= 1.6.0, < 2.0.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "5.95.0"
    }
    helm = {
      source  = "hashicorp/helm"
      version = "2.17.0"
    }
    kubernetes = {
      source  = "hashicorp/kubernetes"
      version = "2.36.0"
    }
    random = {
      source  = "hashicorp/random"
      version = "3.7.2"
    }
  }

  # State holds the generated database and cache passwords: keep it in an encrypted, access-
  # controlled backend, e.g.:
  #   backend "s3" { bucket = "...", key = "gatehouse/terraform.tfstate", region = "...", encrypt = true, use_lockfile = true }
}
