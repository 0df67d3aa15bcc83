# The gatehouse release, wired to Aurora and ElastiCache through the chart's external.* values.

locals {
  mysql_port = aws_rds_cluster.mysql.port
  # One DSN per reader instance, not the load-balanced reader endpoint: the auth service tracks
  # each replica's lag on its own connection pool, which a balanced name would mix up. The
  # readers are the instances that are not the writer now: the instances are created in
  # parallel, so the writer is whichever the cluster took first (not always index 0), and a
  # failover moves it; each apply reads it again.
  reader_hosts = [for instance in aws_rds_cluster_instance.mysql : instance.endpoint if !instance.writer]
  # Aurora accepts TLS only (require_secure_transport); with the RDS CA bundle the auth pods
  # verify its certificate and name too.
  mysql_tls = var.rds_ca_bundle_pem != "" ? "ssl-mode=verify-identity&ssl-ca=/etc/gatehouse/mysql-ca/ca.crt" : "ssl-mode=required"
  # mysql://user:password@host:port/gatehouse?tls: the application user's, the migration
  # user's, and the master user's (for the bootstrap Job only).
  mysql_dsn           = "mysql://gatehouse_app:${random_password.mysql_app.result}@%s:${local.mysql_port}/gatehouse?${local.mysql_tls}"
  mysql_migration_dsn = "mysql://gatehouse_ddl:${random_password.mysql_migration.result}@%s:${local.mysql_port}/gatehouse?${local.mysql_tls}"
  mysql_admin_dsn     = "mysql://gatehouse:${random_password.mysql.result}@%s:${local.mysql_port}/gatehouse?${local.mysql_tls}"
  # With an Ingress, the ingress controller's pods are the only ones that may reach the HTTP
  # port and the only ones whose X-Forwarded-For is believed: the login throttle counts clients
  # by the address it names, so nothing else may write it (chart README "Client addresses").
  ingress           = var.hostname != ""
  trusted_proxies   = local.ingress ? var.ingress_proxy_cidrs : []
  http_ingress_from = local.ingress ? [{ namespaceSelector = { matchLabels = { "kubernetes.io/metadata.name" = var.ingress_controller_namespace } } }] : []
}

resource "kubernetes_namespace_v1" "gatehouse" {
  metadata {
    name = var.namespace
  }
}

# The in-chart etcd's volumes. EKS clusters of Kubernetes 1.30 and later have no default
# StorageClass (gp2 is no longer marked default), so a claim that names none stays Pending and the
# release never becomes ready: the chart is given this one by name.
resource "kubernetes_storage_class_v1" "etcd" {
  metadata {
    name = "${local.name}-gp3"
  }
  storage_provisioner    = "ebs.csi.aws.com"
  volume_binding_mode    = "WaitForFirstConsumer"
  allow_volume_expansion = true
  parameters = {
    type      = "gp3"
    encrypted = "true"
  }
}

resource "kubernetes_secret_v1" "mysql_dsns" {
  metadata {
    name      = "gatehouse-mysql-dsns"
    namespace = kubernetes_namespace_v1.gatehouse.metadata[0].name
  }
  data = {
    "primary-dsn"   = format(local.mysql_dsn, aws_rds_cluster.mysql.endpoint)
    "replica-dsns"  = join(",", [for host in local.reader_hosts : format(local.mysql_dsn, host)])
    "migration-dsn" = format(local.mysql_migration_dsn, aws_rds_cluster.mysql.endpoint)
    "admin-dsn"     = format(local.mysql_admin_dsn, aws_rds_cluster.mysql.endpoint)
  }
}

resource "kubernetes_secret_v1" "mysql_ca" {
  count = var.rds_ca_bundle_pem != "" ? 1 : 0
  metadata {
    name      = "gatehouse-mysql-ca"
    namespace = kubernetes_namespace_v1.gatehouse.metadata[0].name
  }
  data = {
    "ca.crt" = var.rds_ca_bundle_pem
  }
}

# The CA of an etcd of your own (var.etcd_endpoints): the tiers verify its certificate.
resource "kubernetes_secret_v1" "etcd_ca" {
  count = length(var.etcd_endpoints) > 0 && var.etcd_ca_pem != "" ? 1 : 0
  metadata {
    name      = "gatehouse-etcd-ca"
    namespace = kubernetes_namespace_v1.gatehouse.metadata[0].name
  }
  data = {
    "ca.crt" = var.etcd_ca_pem
  }
}

resource "kubernetes_secret_v1" "redis_url" {
  metadata {
    name      = "gatehouse-redis-url"
    namespace = kubernetes_namespace_v1.gatehouse.metadata[0].name
  }
  data = {
    url = "rediss://:${random_password.redis.result}@${aws_elasticache_replication_group.redis.primary_endpoint_address}:6379/0"
  }
}

resource "helm_release" "gatehouse" {
  name      = "gatehouse"
  namespace = kubernetes_namespace_v1.gatehouse.metadata[0].name
  chart     = var.chart_path
  wait      = true
  timeout   = 900

  values = [yamlencode({
    http = {
      image = { repository = "${var.image_registry}/gatehouse-http", tag = var.image_tag }
      ingress = {
        enabled = local.ingress
        hosts   = [{ host = var.hostname, paths = ["/"] }]
      }
      trustedProxies = local.trusted_proxies
    }
    auth = {
      image = { repository = "${var.image_registry}/gatehouse-auth", tag = var.image_tag }
    }
    mysql = { enabled = false }
    redis = { enabled = false }
    etcd = {
      enabled     = length(var.etcd_endpoints) == 0
      persistence = { storageClass = kubernetes_storage_class_v1.etcd.metadata[0].name }
    }
    external = {
      mysql = {
        writerHost     = aws_rds_cluster.mysql.endpoint
        readerHosts    = local.reader_hosts
        port           = local.mysql_port
        existingSecret = kubernetes_secret_v1.mysql_dsns.metadata[0].name
        caSecret       = var.rds_ca_bundle_pem != "" ? kubernetes_secret_v1.mysql_ca[0].metadata[0].name : ""
      }
      # ElastiCache's in-transit encryption presents a certificate of a public CA: rediss://
      # verifies it against the image's system CAs, host name included.
      redis = {
        existingSecret = kubernetes_secret_v1.redis_url.metadata[0].name
      }
      # An etcd of your own: TLS verified against var.etcd_ca_pem. Not wired here: its users
      # (external.etcd.auth / .http, created with `python -m services.auth etcd-bootstrap`).
      # Without them any client that reaches etcd may write the JWT public keys the HTTP tier
      # trusts, and so forge sessions: restrict who reaches it, or set those values (the chart
      # refuses users without a CA, their passwords would travel in plaintext).
      etcd = {
        endpoints = var.etcd_endpoints
        caSecret  = length(kubernetes_secret_v1.etcd_ca) > 0 ? kubernetes_secret_v1.etcd_ca[0].metadata[0].name : ""
        # The chart refuses an etcd without users unless told: this environment does not wire
        # them (above), so the operator must accept that explicitly.
        insecureNoUsers = var.etcd_insecure_no_users
      }
    }
    networkPolicy = {
      externalCidrs   = [var.vpc_cidr]
      httpIngressFrom = local.http_ingress_from
    }
    serviceMonitor = {
      enabled          = var.prometheus_release_label != ""
      additionalLabels = { release = var.prometheus_release_label }
    }
    prometheusRule = {
      enabled          = var.prometheus_release_label != ""
      additionalLabels = { release = var.prometheus_release_label }
    }
    grafanaDashboard = { enabled = var.prometheus_release_label != "" }
  })]

  lifecycle {
    precondition {
      condition     = !local.ingress || length(var.ingress_proxy_cidrs) > 0
      error_message = "hostname is set, so ingress_proxy_cidrs must name the ingress controller's pod addresses: without them every client would share the controller's address in the login throttle (and the chart refuses to render)."
    }
  }
}
