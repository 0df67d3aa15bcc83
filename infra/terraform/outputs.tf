output "cluster_name" {
  description = "EKS cluster name, for `aws eks update-kubeconfig --name`."
  value       = module.eks.cluster_name
}

output "mysql_writer_endpoint" {
  description = "Aurora cluster (writer) endpoint."
  value       = aws_rds_cluster.mysql.endpoint
}

output "mysql_reader_endpoint" {
  description = "Aurora load-balanced reader endpoint (for ad-hoc reads; the auth service uses the instance endpoints)."
  value       = aws_rds_cluster.mysql.reader_endpoint
}

output "mysql_reader_instance_endpoints" {
  description = "Endpoints of the reader instances, one replica DSN each."
  value       = local.reader_hosts
}

output "redis_primary_endpoint" {
  description = "ElastiCache primary endpoint (TLS)."
  value       = aws_elasticache_replication_group.redis.primary_endpoint_address
}

output "namespace" {
  description = "Namespace of the gatehouse release."
  value       = helm_release.gatehouse.namespace
}

output "release_status" {
  description = "Status of the gatehouse Helm release."
  value       = helm_release.gatehouse.status
}
