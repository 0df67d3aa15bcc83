variable "region" {
  type        = string
  description = "AWS region of the environment, e.g. eu-west-1."
}

variable "environment" {
  type        = string
  description = "Environment name; prefixes every resource name (e.g. prod, staging)."

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,20}$", var.environment))
    error_message = "environment must be 2-21 lowercase letters, digits or dashes, starting with a letter."
  }
}

variable "tags" {
  type        = map(string)
  description = "Extra tags on every AWS resource."
  default     = {}
}

variable "availability_zones" {
  type        = list(string)
  description = "Three availability zones of the region (e.g. eu-west-1a, eu-west-1b, eu-west-1c): subnets, nodes and data stores spread over them."

  validation {
    condition     = length(var.availability_zones) == 3
    error_message = "availability_zones must name exactly three zones."
  }
}

variable "vpc_cidr" {
  type        = string
  description = "IPv4 CIDR block of the VPC, /16 to /19; split into private (1/16 each), public and database (1/256 each) subnets over three zones."
  default     = "10.40.0.0/16"

  # network.tf cuts the public and database subnets 8 bits longer than the VPC: past /19 they
  # would be smaller than /27 (the least a load balancer's subnet may be) and past /20 smaller
  # than /28, which AWS refuses, failing the apply midway after the VPC exists.
  validation {
    condition     = can(cidrnetmask(var.vpc_cidr)) && try(tonumber(split("/", var.vpc_cidr)[1]) >= 16 && tonumber(split("/", var.vpc_cidr)[1]) <= 19, false)
    error_message = "vpc_cidr must be an IPv4 CIDR block from /16 (the largest VPC) to /19: the public and database subnets are 8 bits longer, and must be at least /27."
  }
}

variable "kubernetes_version" {
  type        = string
  description = "EKS Kubernetes version (the chart is validated against 1.30 to 1.37)."
  default     = "1.33"
}

variable "cluster_endpoint_public_access_cidrs" {
  type        = list(string)
  description = "Addresses allowed to reach the EKS API endpoint from the internet; empty keeps the endpoint private."
  default     = []
}

variable "node_instance_types" {
  type        = list(string)
  description = "Instance types of the managed node group. bcrypt is CPU-bound: compute-optimised types suit the auth service."
  default     = ["c7i.xlarge"]
}

variable "node_count" {
  type = object({
    min     = number
    max     = number
    desired = number
  })
  description = "Size of the managed node group."
  default     = { min = 3, max = 9, desired = 3 }
}

variable "aurora_instance_class" {
  type        = string
  description = "Instance class of the Aurora MySQL writer and readers."
  default     = "db.r7g.large"
}

variable "aurora_reader_count" {
  type        = number
  description = "Aurora reader instances. Each becomes its own replica DSN of the auth service, which tracks every replica's lag."
  default     = 1

  validation {
    condition     = var.aurora_reader_count >= 0 && var.aurora_reader_count <= 15
    error_message = "aurora_reader_count must be between 0 and 15."
  }
}

variable "aurora_engine_version" {
  type        = string
  description = "Aurora MySQL engine version (MySQL 8.0 compatible) the cluster is created with. Later minor versions come from AWS's automatic upgrades, which Terraform does not undo (engine_version is ignored after creation): upgrade deliberately with `aws rds modify-db-cluster --engine-version`."
  default     = "8.0.mysql_aurora.3.08.2"
}

variable "cache_node_type" {
  type        = string
  description = "ElastiCache node type."
  default     = "cache.r7g.large"
}

variable "etcd_endpoints" {
  type        = list(string)
  description = "host:port of an etcd cluster of your own; empty runs the chart's in-cluster etcd (AWS has no managed etcd)."
  default     = []
}

variable "etcd_ca_pem" {
  type        = string
  description = "The CA of the etcd of etcd_endpoints, PEM. Set: the tiers talk TLS to it and verify its certificate. Empty: plaintext, and the chart refuses etcd users (their passwords would cross the network in plaintext)."
  default     = ""
}

variable "etcd_insecure_no_users" {
  type        = bool
  description = "Accept the etcd of etcd_endpoints without the tiers' users (this environment does not wire them): anything that reaches it may write the JWT public keys the HTTP tier trusts. The chart refuses such an etcd unless this is true; set it only where nothing but the gatehouse pods reaches that etcd."
  default     = false
}

variable "chart_path" {
  type        = string
  description = "Path of the gatehouse chart, relative to this folder or absolute."
  default     = "../../charts/gatehouse"
}

variable "image_tag" {
  type        = string
  description = "Tag (or tag@sha256:digest) of the gatehouse-http and gatehouse-auth images."
}

variable "image_registry" {
  type        = string
  description = "Registry path holding the gatehouse-http and gatehouse-auth images."
  default     = "ghcr.io/gatehouse"
}

variable "hostname" {
  type        = string
  description = "Public hostname of the API; empty creates no Ingress."
  default     = ""
}

variable "ingress_controller_namespace" {
  type        = string
  description = "Namespace of the ingress controller serving hostname: only its pods may reach the HTTP pods' API port (the chart's networkPolicy.httpIngressFrom)."
  default     = "ingress-nginx"
}

variable "ingress_proxy_cidrs" {
  type        = list(string)
  description = "Addresses of the ingress controller's pods (e.g. the subnets they run in), required with hostname: their X-Forwarded-For names the client the login throttle counts (the chart's http.trustedProxies). With the VPC CNI, the private subnets the nodes run in."
  default     = []
}

variable "namespace" {
  type        = string
  description = "Kubernetes namespace of the release."
  default     = "gatehouse"
}

variable "prometheus_release_label" {
  type        = string
  description = "Value of the `release` label kube-prometheus-stack selects ServiceMonitors and rules by; empty turns monitoring objects off."
  default     = ""
}

variable "rds_ca_bundle_pem" {
  type        = string
  description = "The RDS CA bundle for the cluster's region (https://truststore.pki.rds.amazonaws.com/<region>/<region>-bundle.pem), PEM. Set: the auth pods verify Aurora's certificate and host name (ssl-mode=verify-identity). Empty: TLS without verification (ssl-mode=required)."
  default     = ""
}
