"""The chart's side of TLS to MySQL and Valkey and of the two MySQL users: the in-chart stores
accept TLS only, with a certificate the auth pods verify, and the database Jobs run before the
replicas with the only copies of the master and migration users' credentials."""

from __future__ import annotations

import base64
from typing import Any

from cryptography import x509

from services.auth.store.database import parse_dsn
from tests.delivery.certificates import covers, verifies
from tests.delivery.chart import RELEASE, VALUE_SETS, Manifest, named, of_kind, render

CA_DIR = "/etc/gatehouse/data-stores-ca"
TLS_SECRET = f"{RELEASE}-data-stores-tls"


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container["env"]}


def _containers(manifests: tuple[Manifest, ...], kind: str, name: str) -> list[dict[str, Any]]:
    containers: list[dict[str, Any]] = named(manifests, kind, name)["spec"]["template"]["spec"][
        "containers"
    ]
    return containers


def _mounted_secrets(manifests: tuple[Manifest, ...], kind: str, name: str) -> dict[str, str]:
    """mount path -> Secret name of the first container of a workload."""
    spec = named(manifests, kind, name)["spec"]["template"]["spec"]
    secrets = {v["name"]: v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v}
    return {
        mount["mountPath"]: secrets[mount["name"]]
        for mount in spec["containers"][0]["volumeMounts"]
        if mount["name"] in secrets
    }


def test_in_chart_stores_accept_tls_only_with_a_certificate_the_auth_pods_verify() -> None:
    manifests = render(None)
    secret = named(manifests, "Secret", TLS_SECRET)
    assert secret["type"] == "kubernetes.io/tls"
    data = {key: base64.b64decode(value) for key, value in secret["data"].items()}
    ca = x509.load_pem_x509_certificate(data["ca.crt"])
    leaf = x509.load_pem_x509_certificate(data["tls.crt"])
    verifies(ca, leaf)

    connections = named(manifests, "Secret", f"{RELEASE}-auth-connections")["stringData"]
    dsns = [connections["mysql-primary-dsn"], *connections["mysql-replica-dsns"].split(",")]
    for dsn in dsns:
        address = parse_dsn(dsn)
        assert (address.ssl_mode, address.ssl_ca) == ("verify-identity", f"{CA_DIR}/ca.crt")
        assert covers(leaf, address.host), address.host
    redis_url = connections["redis-url"]
    assert redis_url.startswith("rediss://") and f"ssl_ca_certs={CA_DIR}/ca.crt" in redis_url
    assert covers(leaf, f"{RELEASE}-redis.gatehouse.svc")

    # The auth pods and both Jobs find that CA where the DSNs name it; the servers get the pair.
    for kind, name in (
        ("Deployment", f"{RELEASE}-auth"),
        ("Job", f"{RELEASE}-migrate"),
        ("Job", f"{RELEASE}-mysql-bootstrap"),
    ):
        assert _mounted_secrets(manifests, kind, name)[CA_DIR] == TLS_SECRET, name
    for server in (f"{RELEASE}-mysql-primary", f"{RELEASE}-mysql-replica", f"{RELEASE}-redis"):
        assert TLS_SECRET in _mounted_secrets(manifests, "StatefulSet", server).values(), server
    primary_args = _containers(manifests, "StatefulSet", f"{RELEASE}-mysql-primary")[0]["args"]
    assert "--require-secure-transport=ON" in primary_args
    replica_args = " ".join(
        _containers(manifests, "StatefulSet", f"{RELEASE}-mysql-replica")[0]["args"]
    )
    assert "--require-secure-transport=ON" in replica_args
    init = named(manifests, "ConfigMap", f"{RELEASE}-mysql-init")["data"]["replica.sh"]
    assert "SOURCE_SSL=1" in init and "SOURCE_SSL_VERIFY_SERVER_CERT=1" in init
    redis_args = _containers(manifests, "StatefulSet", f"{RELEASE}-redis")[0]["args"]
    assert redis_args[redis_args.index("--port") + 1] == "0"  # no plaintext port
    assert redis_args[redis_args.index("--tls-port") + 1] == "6379"


def test_tls_off_leaves_plain_connections_and_no_certificate() -> None:
    manifests = render(None, "mysql.tls.enabled=false", "redis.tls.enabled=false")
    assert TLS_SECRET not in {secret["metadata"]["name"] for secret in of_kind(manifests, "Secret")}
    connections = named(manifests, "Secret", f"{RELEASE}-auth-connections")["stringData"]
    assert parse_dsn(connections["mysql-primary-dsn"]).ssl_mode == "disabled"
    assert connections["redis-url"].startswith("redis://")
    assert CA_DIR not in _mounted_secrets(manifests, "Deployment", f"{RELEASE}-auth")


def test_cert_manager_issues_the_data_stores_certificate_when_enabled() -> None:
    manifests = render(
        None, "tls.certManager.enabled=true", "tls.certManager.issuerRef.name=internal-ca"
    )
    assert TLS_SECRET not in {secret["metadata"]["name"] for secret in of_kind(manifests, "Secret")}
    certificate = named(manifests, "Certificate", TLS_SECRET)
    spec = certificate["spec"]
    assert spec["secretName"] == TLS_SECRET
    assert spec["issuerRef"] == {
        "name": "internal-ca",
        "kind": "Issuer",
        "group": "cert-manager.io",
    }
    assert f"{RELEASE}-mysql-primary.gatehouse.svc" in spec["dnsNames"]
    assert f"*.{RELEASE}-mysql-replica.gatehouse.svc" in spec["dnsNames"]
    assert f"{RELEASE}-redis.gatehouse.svc" in spec["dnsNames"]


def test_database_jobs_hold_the_master_and_migration_users_and_the_auth_pods_do_not() -> None:
    manifests = render(None)
    jobs = {job["metadata"]["name"]: job for job in of_kind(manifests, "Job")}
    bootstrap, migrate = jobs[f"{RELEASE}-mysql-bootstrap"], jobs[f"{RELEASE}-migrate"]
    # The in-chart MySQL exists only once the install's resources do.
    for job, weight in ((bootstrap, -10), (migrate, 0)):
        annotations = job["metadata"]["annotations"]
        assert annotations["helm.sh/hook"] == "post-install,pre-upgrade"
        assert int(annotations["helm.sh/hook-weight"]) == weight
    job_dsns = named(manifests, "Secret", f"{RELEASE}-mysql-jobs")
    assert int(job_dsns["metadata"]["annotations"]["helm.sh/hook-weight"]) < -10
    users = {key: parse_dsn(dsn).user for key, dsn in job_dsns["stringData"].items()}
    assert users == {
        "admin-dsn": "root",
        "migration-dsn": "gatehouse_ddl",
        "primary-dsn": "gatehouse",
    }
    assert "GATEHOUSE_MYSQL_ADMIN_DSN" in _env(
        _containers(manifests, "Job", f"{RELEASE}-mysql-bootstrap")[0]
    )
    assert "GATEHOUSE_MYSQL_ADMIN_DSN" not in _env(
        _containers(manifests, "Job", f"{RELEASE}-migrate")[0]
    )
    auth_env = _env(_containers(manifests, "Deployment", f"{RELEASE}-auth")[0])
    assert not {"GATEHOUSE_MYSQL_ADMIN_DSN", "GATEHOUSE_MYSQL_MIGRATION_DSN"} & set(auth_env)
    config = named(manifests, "ConfigMap", f"{RELEASE}-auth")["data"]
    assert config["GATEHOUSE_MIGRATE_ON_START"] == "false"  # the application user may not
    primary_env = _env(_containers(manifests, "StatefulSet", f"{RELEASE}-mysql-primary")[0])
    assert "MYSQL_USER" not in primary_env  # the image would grant it everything


def test_with_an_external_mysql_the_jobs_run_before_the_install_from_its_secret() -> None:
    manifests = render(next(p for p in VALUE_SETS if p.stem == "external-values"))
    bootstrap = named(manifests, "Job", f"{RELEASE}-mysql-bootstrap")
    assert bootstrap["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    env = _env(bootstrap["spec"]["template"]["spec"]["containers"][0])
    assert env["GATEHOUSE_MYSQL_ADMIN_DSN"] == {
        "secretKeyRef": {"name": "gatehouse-mysql-dsns", "key": "admin-dsn"}
    }
    assert env["GATEHOUSE_MYSQL_MIGRATION_DSN"] == {
        "secretKeyRef": {"name": "gatehouse-mysql-dsns", "key": "migration-dsn"}
    }
