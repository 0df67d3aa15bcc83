"""Settings of the HTTP tier (see the README's configuration table)."""

from __future__ import annotations

from dataclasses import dataclass

from services.foundation.config import setting
from services.foundation.discovery import DiscoverySettings


@dataclass(frozen=True, kw_only=True)
class HttpSettings(DiscoverySettings):
    host: str = setting("GATEHOUSE_HTTP_HOST", "127.0.0.1", "Address the HTTP server binds")
    port: int = setting("GATEHOUSE_HTTP_PORT", 8000, "HTTP port")
    ops_port: int = setting(
        "GATEHOUSE_HTTP_OPS_PORT", 9101, "Ops port of the pod (/healthz, /readyz, /metrics), served once per pod by the main process"
    )
    metrics_on_api_port: bool = setting(
        "GATEHOUSE_METRICS_ON_API_PORT", True, "Also serve /metrics on the API port (the chart turns it off)"
    )
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
    max_body_bytes: int = setting("GATEHOUSE_MAX_BODY_BYTES", 64 * 1024, "Largest accepted JSON body")
    max_in_flight: int = setting(
        "GATEHOUSE_MAX_IN_FLIGHT", 64, "Requests one worker handles at once, not counting those waiting for their body; beyond that it answers 503 with Retry-After"
    )
    body_timeout: float = setting(
        "GATEHOUSE_BODY_TIMEOUT", 10.0, "Seconds a JSON or form body may take to arrive; past that 408 and the connection is closed"
    )
    upload_min_rate: int = setting(
        "GATEHOUSE_UPLOAD_MIN_RATE", 32 * 1024, "Lowest average rate in bytes/s of a picture upload once its grace period is over; below it 408"
    )
    upload_grace: float = setting(
        "GATEHOUSE_UPLOAD_GRACE", 10.0, "Seconds a picture upload may take before GATEHOUSE_UPLOAD_MIN_RATE applies"
    )
    header_timeout: float = setting(
        "GATEHOUSE_HEADER_TIMEOUT", 10.0, "Seconds a new connection gets to send a request's headers; past that it is closed"
    )
    keep_alive_timeout: float = setting(
        "GATEHOUSE_KEEP_ALIVE_TIMEOUT", 10.0, "Seconds an idle keep-alive connection is kept (both servers use one timer for this and GATEHOUSE_HEADER_TIMEOUT: the smaller applies)"
    )
    max_connections: int = setting(
        "GATEHOUSE_HTTP_MAX_CONNECTIONS", 8192, "Connections one worker keeps open at once, idle ones included (an idle one costs about 3 KB)"
    )
    max_header_bytes: int = setting(
        "GATEHOUSE_MAX_HEADER_BYTES", 16 * 1024, "Largest request head (names and values of all headers); beyond it 431"
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
        if self.body_timeout <= 0 or self.upload_grace <= 0:
            raise ValueError("GATEHOUSE_BODY_TIMEOUT and GATEHOUSE_UPLOAD_GRACE must be positive")
        if self.upload_min_rate < 1:
            raise ValueError("GATEHOUSE_UPLOAD_MIN_RATE must be at least 1 byte/s")
        if self.header_timeout <= 0 or self.keep_alive_timeout <= 0:
            raise ValueError("GATEHOUSE_HEADER_TIMEOUT and GATEHOUSE_KEEP_ALIVE_TIMEOUT must be positive")
        if self.max_connections < 1:
            raise ValueError("GATEHOUSE_HTTP_MAX_CONNECTIONS must be at least 1")
        if self.max_header_bytes < 1024:
            raise ValueError("GATEHOUSE_MAX_HEADER_BYTES must be at least 1024")
        if self.ops_port == self.port:
            raise ValueError("GATEHOUSE_HTTP_OPS_PORT must differ from GATEHOUSE_HTTP_PORT")
        if self.max_in_flight < 1:
            raise ValueError("GATEHOUSE_MAX_IN_FLIGHT must be at least 1")
        if not 1 <= self.pool_min_connections <= self.pool_max_connections:
            raise ValueError("need 1 <= GATEHOUSE_POOL_MIN_CONNECTIONS <= GATEHOUSE_POOL_MAX_CONNECTIONS")

    @property
    def idle_timeout(self) -> float:
        """The one timer both servers have for "no request headers yet": from a connection's
        start or its last response to the end of the next request's headers."""
        return min(self.header_timeout, self.keep_alive_timeout)
