# Aurora MySQL (writer + readers) and ElastiCache (Redis OSS), reachable only from the nodes.

resource "aws_security_group" "data_stores" {
  name        = "${local.name}-data-stores"
  description = "Aurora MySQL and ElastiCache of gatehouse: reachable from the EKS nodes only"
  vpc_id      = module.vpc.vpc_id

  ingress {
    description     = "MySQL from the EKS nodes (auth service pods)"
    from_port       = 3306
    to_port         = 3306
    protocol        = "tcp"
    security_groups = [module.eks.node_security_group_id]
  }

  ingress {
    description     = "Redis from the EKS nodes (auth service pods)"
    from_port       = 6379
    to_port         = 6379
    protocol        = "tcp"
    security_groups = [module.eks.node_security_group_id]
  }
}

resource "random_password" "mysql" {
  length  = 40
  special = false # it is embedded in a mysql:// URL
}

# The two users Gatehouse connects as (the master user above creates them: the chart's bootstrap
# Job, since Terraform cannot reach the private cluster from where it runs).
resource "random_password" "mysql_app" {
  length  = 40
  special = false # it is embedded in a mysql:// URL
}

resource "random_password" "mysql_migration" {
  length  = 40
  special = false # it is embedded in a mysql:// URL
}

resource "random_password" "redis" {
  length  = 48
  special = false # it is embedded in a rediss:// URL
}

data "aws_caller_identity" "current" {}

resource "aws_kms_key" "data" {
  description         = "${local.name}: Aurora, ElastiCache and Performance Insights encryption"
  enable_key_rotation = true
  # The default key policy, written out: the account administers the key through IAM.
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Sid       = "AccountAdministersThroughIam"
      Effect    = "Allow"
      Principal = { AWS = "arn:aws:iam::${data.aws_caller_identity.current.account_id}:root" }
      Action    = "kms:*"
      Resource  = "*"
    }]
  })
}

# Clients must use TLS: a plaintext login is refused by the server itself.
resource "aws_rds_cluster_parameter_group" "mysql" {
  name        = "${local.name}-tls-only"
  family      = "aurora-mysql8.0"
  description = "gatehouse: Aurora MySQL accepting TLS connections only"

  parameter {
    name         = "require_secure_transport"
    value        = "ON"
    apply_method = "immediate"
  }
}

resource "aws_rds_cluster" "mysql" {
  cluster_identifier              = local.name
  db_cluster_parameter_group_name = aws_rds_cluster_parameter_group.mysql.name
  engine                          = "aurora-mysql"
  engine_version                  = var.aurora_engine_version
  database_name                   = "gatehouse"
  master_username                 = "gatehouse"
  master_password                 = random_password.mysql.result
  db_subnet_group_name            = module.vpc.database_subnet_group_name
  vpc_security_group_ids          = [aws_security_group.data_stores.id]

  storage_encrypted                   = true
  kms_key_id                          = aws_kms_key.data.arn
  iam_database_authentication_enabled = true
  backup_retention_period             = 14
  backtrack_window                    = 86400
  preferred_backup_window             = "02:00-03:00"
  copy_tags_to_snapshot               = true
  deletion_protection                 = true
  final_snapshot_identifier           = "${local.name}-final"
  enabled_cloudwatch_logs_exports     = ["audit", "error", "slowquery"]

  # The instances take AWS's minor upgrades (auto_minor_version_upgrade): once one ran, a
  # version pinned to the patch would plan a downgrade, which AWS refuses, and every later
  # apply would fail (and never reach the helm_release, which depends on this cluster).
  lifecycle {
    ignore_changes = [engine_version]
  }
}

resource "aws_rds_cluster_instance" "mysql" {
  count = 1 + var.aurora_reader_count

  identifier         = "${local.name}-${count.index}"
  cluster_identifier = aws_rds_cluster.mysql.id
  engine             = aws_rds_cluster.mysql.engine
  engine_version     = aws_rds_cluster.mysql.engine_version
  instance_class     = var.aurora_instance_class

  # Terraform creates the instances in parallel: the writer is the one Aurora took first, not
  # necessarily instance 0 (gatehouse.tf reads each one's `writer`). On a failover the reader
  # of the lowest tier is promoted.
  promotion_tier                  = count.index
  auto_minor_version_upgrade      = true
  performance_insights_enabled    = true
  performance_insights_kms_key_id = aws_kms_key.data.arn
  monitoring_interval             = 30
  monitoring_role_arn             = aws_iam_role.rds_monitoring.arn
  publicly_accessible             = false

  lifecycle {
    ignore_changes = [engine_version]
  }
}

resource "aws_iam_role" "rds_monitoring" {
  name = "${local.name}-rds-monitoring"
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Action    = "sts:AssumeRole"
      Principal = { Service = "monitoring.rds.amazonaws.com" }
    }]
  })
}

resource "aws_iam_role_policy_attachment" "rds_monitoring" {
  role       = aws_iam_role.rds_monitoring.name
  policy_arn = "arn:aws:iam::aws:policy/service-role/AmazonRDSEnhancedMonitoringRole"
}

resource "aws_elasticache_subnet_group" "redis" {
  name       = local.name
  subnet_ids = module.vpc.database_subnets
}

# The default group's volatile-lru would evict tombstones and write records under memory
# pressure (README, "A Redis that may evict keys"); a full Redis must refuse writes instead.
resource "aws_elasticache_parameter_group" "redis" {
  name   = local.name
  family = "redis7"

  parameter {
    name  = "maxmemory-policy"
    value = "noeviction"
  }
}

resource "aws_elasticache_replication_group" "redis" {
  replication_group_id = local.name
  description          = "gatehouse session and profile cache"
  engine               = "redis"
  engine_version       = "7.1"
  node_type            = var.cache_node_type
  num_cache_clusters   = 2
  port                 = 6379
  parameter_group_name = aws_elasticache_parameter_group.redis.name

  subnet_group_name  = aws_elasticache_subnet_group.redis.name
  security_group_ids = [aws_security_group.data_stores.id]

  automatic_failover_enabled = true
  multi_az_enabled           = true
  at_rest_encryption_enabled = true
  kms_key_id                 = aws_kms_key.data.arn
  transit_encryption_enabled = true
  auth_token                 = random_password.redis.result
  snapshot_retention_limit   = 1
  auto_minor_version_upgrade = true
}
