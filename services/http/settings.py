"""Settings of the HTTP tier (see the README's configuration table)."""

from __future__ import annotations

from dataclasses import dataclass

from services.foundation.config import parse_prefix, setting


@dataclass(frozen=True, kw_only=True)
class HttpSettings:
    host: str = setting("GATEHOUSE_HTTP_HOST", "127.0.0.1", "Address the HTTP server binds")
    port: int = setting("GATEHOUSE_HTTP_PORT", 8000, "HTTP port")
    server: str = setting("GATEHOUSE_HTTP_SERVER", "granian", "ASGI server: granian or hypercorn")
    workers: int = setting("GATEHOUSE_HTTP_WORKERS", 2, "Worker processes")
    metrics_dir: str = setting(
        "GATEHOUSE_METRICS_DIR", "", "Folder for multiprocess metrics; default a fresh temporary folder"
    )

    etcd_endpoints: tuple[str, ...] = setting(
        "GATEHOUSE_ETCD_ENDPOINTS", ("127.0.0.1:2379",), "etcd client endpoints, host:port, comma-separated"
    )
    discovery_prefix: str = setting(
        "GATEHOUSE_DISCOVERY_PREFIX", "/gatehouse/services/auth/", "etcd prefix of auth replica records",
        parse=parse_prefix,
    )
    jwt_keys_prefix: str = setting(
        "GATEHOUSE_JWT_KEYS_PREFIX", "/gatehouse/jwt-keys/", "etcd prefix of published JWT public keys",
        parse=parse_prefix,
    )
    jwt_public_keys: str = setting(
        "GATEHOUSE_JWT_PUBLIC_KEYS", "", "Extra Ed25519 public keys (PEM, concatenated) trusted for tokens"
    )

    pool_min_connections: int = setting("GATEHOUSE_POOL_MIN_CONNECTIONS", 1, "Connections kept per auth replica")
    pool_max_connections: int = setting("GATEHOUSE_POOL_MAX_CONNECTIONS", 4, "Connections at most per auth replica")
    connect_timeout: float = setting("GATEHOUSE_CONNECT_TIMEOUT", 1.0, "Seconds to connect and handshake")
    call_timeout: float = setting("GATEHOUSE_CALL_TIMEOUT", 10.0, "Deadline in seconds of one API call's RPCs")
    pool_idle_timeout: float = setting("GATEHOUSE_POOL_IDLE_TIMEOUT", 60.0, "Seconds before an idle extra connection closes")
    eject_seconds: float = setting("GATEHOUSE_EJECT_SECONDS", 2.0, "Seconds a replica is skipped after its connection broke")

    cookie_secure: bool = setting("GATEHOUSE_COOKIE_SECURE", False, "Mark the session cookie Secure (HTTPS)")
    max_body_bytes: int = setting("GATEHOUSE_MAX_BODY_BYTES", 64 * 1024, "Largest accepted JSON body")
    log_level: str = setting("GATEHOUSE_LOG_LEVEL", "INFO", "Log level")

    def __post_init__(self) -> None:
        if self.server not in ("granian", "hypercorn"):
            raise ValueError("GATEHOUSE_HTTP_SERVER must be granian or hypercorn")
        if not 1 <= self.pool_min_connections <= self.pool_max_connections:
            raise ValueError("need 1 <= GATEHOUSE_POOL_MIN_CONNECTIONS <= GATEHOUSE_POOL_MAX_CONNECTIONS")
