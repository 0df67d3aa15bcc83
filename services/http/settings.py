"""Settings of the HTTP tier (see the README's configuration table)."""

from __future__ import annotations

from dataclasses import dataclass

from services.foundation.config import setting
from services.foundation.discovery import DiscoverySettings
from services.http.client_ip import parse_trusted_proxies


@dataclass(frozen=True, kw_only=True)
class HttpSettings(DiscoverySettings):
    host: str = setting("GATEHOUSE_HTTP_HOST", "127.0.0.1", "Address the HTTP server binds")
    port: int = setting("GATEHOUSE_HTTP_PORT", 8000, "HTTP port")
    server: str = setting("GATEHOUSE_HTTP_SERVER", "granian", "ASGI server: granian or hypercorn")
    workers: int = setting("GATEHOUSE_HTTP_WORKERS", 2, "Worker processes")
    metrics_dir: str = setting(
        "GATEHOUSE_METRICS_DIR", "", "Folder for multiprocess metrics; default a fresh temporary folder"
    )

    jwt_public_keys: str = setting(
        "GATEHOUSE_JWT_PUBLIC_KEYS", "", "Extra Ed25519 public keys (PEM, concatenated) trusted for tokens"
    )

    pool_min_connections: int = setting("GATEHOUSE_POOL_MIN_CONNECTIONS", 1, "Connections kept per auth replica")
    pool_max_connections: int = setting("GATEHOUSE_POOL_MAX_CONNECTIONS", 4, "Connections at most per auth replica")
    connect_timeout: float = setting("GATEHOUSE_CONNECT_TIMEOUT", 1.0, "Seconds to connect and handshake")
    call_timeout: float = setting("GATEHOUSE_CALL_TIMEOUT", 10.0, "Deadline in seconds of one API call's RPCs")
    pool_idle_timeout: float = setting("GATEHOUSE_POOL_IDLE_TIMEOUT", 60.0, "Seconds before an idle extra connection closes, or a kept one is pinged; keep it below the auth service's GATEHOUSE_IDLE_TIMEOUT")
    eject_seconds: float = setting("GATEHOUSE_EJECT_SECONDS", 2.0, "Seconds a replica is skipped after its connection broke")

    cookie_secure: bool = setting("GATEHOUSE_COOKIE_SECURE", False, "Mark the session cookie Secure (HTTPS)")
    trusted_proxies: tuple[str, ...] = setting(
        "GATEHOUSE_TRUSTED_PROXIES", (), "CIDRs of reverse proxies whose X-Forwarded-For/-Proto are believed, comma-separated; empty: the TCP peer is the client"
    )
    max_body_bytes: int = setting("GATEHOUSE_MAX_BODY_BYTES", 64 * 1024, "Largest accepted JSON body")
    max_in_flight: int = setting(
        "GATEHOUSE_MAX_IN_FLIGHT", 64, "Requests one worker handles at once; beyond that it answers 503 with Retry-After"
    )
    log_level: str = setting("GATEHOUSE_LOG_LEVEL", "INFO", "Log level")

    # Profile pictures
    max_avatar_bytes: int = setting(
        "GATEHOUSE_MAX_AVATAR_BYTES", 5 * 1024 * 1024, "Largest accepted picture upload in bytes"
    )
    blob_store: str = setting(
        "GATEHOUSE_BLOB_STORE", "database", "Where pictures are kept: database (MySQL, through the auth service) or s3"
    )
    s3_bucket: str = setting("GATEHOUSE_S3_BUCKET", "", "S3 bucket of the pictures (blob store s3)")
    s3_key_prefix: str = setting("GATEHOUSE_S3_KEY_PREFIX", "avatars/", "Prefix of the picture object keys in the bucket")
    s3_endpoint_url: str = setting(
        "GATEHOUSE_S3_ENDPOINT_URL", "", "URL of an S3-compatible API (MinIO, Ceph, ...); empty for AWS S3"
    )
    s3_region: str = setting("GATEHOUSE_S3_REGION", "", "S3 region; empty takes AWS_REGION / AWS_DEFAULT_REGION")
    s3_timeout: float = setting("GATEHOUSE_S3_TIMEOUT", 5.0, "Seconds allowed to connect to S3 and for each read")

    def __post_init__(self) -> None:
        if self.server not in ("granian", "hypercorn"):
            raise ValueError("GATEHOUSE_HTTP_SERVER must be granian or hypercorn")
        if self.blob_store not in ("database", "s3"):
            raise ValueError("GATEHOUSE_BLOB_STORE must be database or s3")
        if self.blob_store == "s3" and not self.s3_bucket:
            raise ValueError("GATEHOUSE_BLOB_STORE=s3 needs GATEHOUSE_S3_BUCKET: set the bucket name")
        if self.max_avatar_bytes < 1:
            raise ValueError("GATEHOUSE_MAX_AVATAR_BYTES must be at least 1")
        if self.max_in_flight < 1:
            raise ValueError("GATEHOUSE_MAX_IN_FLIGHT must be at least 1")
        try:
            parse_trusted_proxies(self.trusted_proxies)
        except ValueError as exc:
            raise ValueError(f"GATEHOUSE_TRUSTED_PROXIES: {exc}") from None
        if not 1 <= self.pool_min_connections <= self.pool_max_connections:
            raise ValueError("need 1 <= GATEHOUSE_POOL_MIN_CONNECTIONS <= GATEHOUSE_POOL_MAX_CONNECTIONS")
