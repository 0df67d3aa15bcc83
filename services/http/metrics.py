"""The HTTP tier's Prometheus metrics (rendered by services.foundation.metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

REQUEST_SECONDS = Histogram(
    "gatehouse_http_request_seconds",
    "HTTP request latency by route template and status code",
    ["route", "status"],
    buckets=LATENCY_BUCKETS,
)
RPC_SECONDS = Histogram(
    "gatehouse_http_rpc_seconds",
    "Latency of one RPC attempt to an auth replica, by method and outcome "
    "(ok, a status name, connection_error, deadline, or abandoned: a hedge or retry answered "
    "first, or the caller left)",
    ["method", "outcome"],
    buckets=LATENCY_BUCKETS,
)
GC_COLLECTIONS = Counter(
    "gatehouse_http_gc_collections",
    "Collections of the cyclic garbage collector in the HTTP workers, by generation (2 is a "
    "full collection); a warm read causes none (services.foundation.heap)",
    ["generation"],
)
CLIENT_DISCONNECTS = Counter(
    "gatehouse_http_client_disconnects",
    "Logins and signups cancelled because their client went away before the answer",
)
CSRF_REFUSALS = Counter(
    "gatehouse_http_csrf_refusals",
    "Requests refused with 403 csrf_failed, by reason: cross_site (Sec-Fetch-Site), origin "
    "(Origin not allowed), token (the session's CSRF token missing or wrong)",
    ["reason"],
)
RPC_RETRIES = Counter(
    "gatehouse_http_rpc_retries",
    "RPCs sent again to another auth replica after an attempt failed, by method and reason: "
    "unsent (the request never left), draining, not_ready (a login on a replica without a "
    "signing key yet), connection_lost, failed (a non-definite "
    "answer), overloaded, attempt_timeout, or unresponsive (its replica missed a health ping)",
    ["method", "reason"],
)
RPC_UNROUTABLE = Counter(
    "gatehouse_http_rpc_unroutable",
    "Calls answered 503 at once because no auth replica advertises the protocol version that "
    "introduced their method (a rolling upgrade not yet past its first new replica), by method",
    ["method"],
)
RPC_REQUEST_DEADLINE_SPENT = Counter(
    "gatehouse_http_rpc_request_deadline_spent",
    "Calls not sent because the request's earlier calls (and a login's wait for its client's "
    "share of the hashing budget) had used up GATEHOUSE_CALL_TIMEOUT, by method; the request "
    "is answered 503 (a call whose own wait for a pool slot ran out is not counted here)",
    ["method"],
)
RPC_HEDGES = Counter(
    "gatehouse_http_rpc_hedges",
    "Idempotent RPCs also sent to a second auth replica because the first had not answered "
    "within the method's recent p99, by method and which attempt answered first (hedge, first, "
    "none)",
    ["method", "winner"],
)
REPLICAS_OUT_OF_ROTATION = Gauge(
    "gatehouse_http_replicas_out_of_rotation",
    "Worker processes that hold this auth replica out of rotation because it missed a health "
    "ping (0 or 1 per worker, summed)",
    ["replica"],
    multiprocess_mode="livesum",
)
REPLICA_EJECTIONS = Counter(
    "gatehouse_http_replica_ejections",
    "Auth replicas taken out of the balancer for GATEHOUSE_EJECT_SECONDS, by reason: "
    "connect_failed, connect_timeout, tls_failed, protocol_mismatch, connection_lost, "
    "internal_errors (the log has one line per outage, not per ejection)",
    ["reason"],
)
POOL_CONNECTIONS = Gauge(
    "gatehouse_http_pool_connections",
    "Open RPC connections per auth replica",
    ["replica"],
    multiprocess_mode="livesum",
)
POOL_IN_FLIGHT = Gauge(
    "gatehouse_http_pool_in_flight",
    "RPCs in progress per auth replica",
    ["replica"],
    multiprocess_mode="livesum",
)
POOL_SLOT_WAITS = Counter(
    "gatehouse_http_pool_slot_waits",
    "RPCs that waited in the pool because every open connection to their auth replica had as "
    "many calls in flight as the replica allows (its Hello's max_calls_in_flight)",
    ["replica"],
)
DISCOVERED_REPLICAS = Gauge(
    "gatehouse_http_discovered_replicas",
    "Auth replicas currently known from discovery, per worker process (pid label)",
    multiprocess_mode="liveall",
)
REPLICAS_KEPT_WITHOUT_RECORD = Gauge(
    "gatehouse_http_replicas_kept_without_record",
    "Auth replicas still called though discovery does not list them (every lease lapsed, as "
    "after a long etcd outage): those that answer on open connections, until they stop or "
    "their records come back (at most 10 s once discovery lists others)",
    multiprocess_mode="livemax",
)
DISCOVERY_RECORDS_REFUSED = Counter(
    "gatehouse_http_discovery_records_refused",
    "Auth replica discovery records ignored because their address is outside "
    "GATEHOUSE_AUTH_REPLICA_CIDRS (counted once per record and value)",
)
DISCOVERY_RECORDS_MALFORMED = Gauge(
    "gatehouse_http_discovery_records_malformed",
    "Auth replica discovery records ignored as malformed now (a replica registered with a host "
    "or instance id no client can use gets no calls)",
    multiprocess_mode="livemax",
)
PICTURE_CACHE_BYTES = Gauge(
    "gatehouse_http_picture_cache_bytes",
    "Bytes of pictures a worker keeps in memory (at most 16 MiB, each for at most "
    "GATEHOUSE_PICTURE_CACHE_SECONDS), per worker process (pid label)",
    multiprocess_mode="liveall",
)
PICTURE_DECODES = Counter(
    "gatehouse_http_picture_decodes",
    "Picture decodes by lane (fast or main) and outcome: ok, refused (by its header, before "
    "decoding), failed (the decoder failed: damaged data, or memory it could not get), "
    "out_of_memory (its memory limit), killed (its CPU limit, or it crashed), queue_timeout "
    "(no decoder free within GATEHOUSE_CALL_TIMEOUT: 503, not decoded) or no_cpu_left (not "
    "run again: the fast lane's run used up the CPU limit); a fast-lane decode that failed "
    "for any cause but its CPU limit is run again in the main lane with what it left",
    ["lane", "outcome"],
)
PICTURE_DECODE_CPU_SECONDS = Histogram(
    "gatehouse_http_picture_decode_cpu_seconds",
    "CPU seconds of each picture decode that finished (killed ones are not observed)",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0),
)
PICTURE_DECODE_PEAK_BYTES = Histogram(
    "gatehouse_http_picture_decode_peak_bytes",
    "Peak resident memory of each decoding child that finished, Pillow and the upload included "
    "(compare with GATEHOUSE_PICTURE_MEMORY_BYTES)",
    buckets=tuple(mib * 1024 * 1024 for mib in (32, 64, 96, 128, 192, 256, 320, 512)),
)
LATE_BODIES = Counter(
    "gatehouse_http_late_bodies",
    "Requests answered 408 because their body arrived too slowly, by kind (body or upload)",
    ["kind"],
)
FRAGMENTED_BODIES = Counter(
    "gatehouse_http_fragmented_bodies",
    "Requests answered 400 and their connection closed because their body came in too many"
    " tiny pieces (each costs the worker as much as a large one)",
)
REFUSED_CONNECTIONS = Counter(
    "gatehouse_http_refused_connections",
    "Connections closed at once because the worker held GATEHOUSE_HTTP_MAX_CONNECTIONS (Hypercorn)",
)
BLOB_STORE_FAILURES = Counter(
    "gatehouse_http_blob_store_failures",
    "Calls to the s3 blob store that failed (unreachable, refused, credentials), by operation: "
    "get (a picture served: 503), put (an upload: 503) or delete (a replaced picture left "
    "stored); the log has one line per 10 s, not per failure",
    ["operation"],
)
SHED_UPLOADS = Counter(
    "gatehouse_http_shed_uploads",
    "Picture uploads answered 503 at once, their body unread, because the worker held "
    "GATEHOUSE_MAX_UPLOADS_IN_FLIGHT uploads",
)
JWT_KEY_REFRESHES = Counter(
    "gatehouse_http_jwt_key_refreshes",
    "Reads of the JWT signing keys from etcd made because a token's key id was unknown, by "
    "outcome: changed (new keys came), unchanged or failed; one read at most per "
    "GATEHOUSE_JWT_KEY_REFRESH_INTERVAL per worker, whatever the number of such tokens",
    ["outcome"],
)
JWT_KEYS_HELD_OVER = Gauge(
    "gatehouse_http_jwt_keys_held_over",
    "Published JWT key records a worker still verifies with after etcd lost its data (its "
    "revision went back), until the new history writes them again or "
    "GATEHOUSE_JWT_KEYS_RESET_GRACE ends; the most of any worker",
    multiprocess_mode="livemax",
)
SIGNING_KEYS_HELD = Gauge(
    "gatehouse_http_signing_key_info",
    "1 for each JWT signing key a worker holds, by its thumbprint kid, per worker process (pid "
    "label): the keys published under GATEHOUSE_JWT_KEYS_PREFIX (and those held over after "
    "etcd lost its data: gatehouse_http_jwt_keys_held_over) and GATEHOUSE_JWT_PUBLIC_KEYS; "
    "0 once a key it held is withdrawn",
    ["kid"],
    multiprocess_mode="liveall",
)
TOKEN_CACHE_LOOKUPS = Counter(
    "gatehouse_http_token_cache_lookups",
    "Session tokens looked up among those the worker verified before, by outcome: hit (no "
    "signature check; added 100 at a time and at each miss, so up to 99 per worker lag) or miss",
    ["outcome"],
)
TOKEN_CACHE_DROPS = Counter(
    "gatehouse_http_token_cache_drops",
    "Verified tokens forgotten, by reason: evicted (the oldest, to stay within "
    "GATEHOUSE_TOKEN_CACHE_SIZE), expired (seen again after its exp) or key_withdrawn (its key "
    "id no longer names the key that verified it)",
    ["reason"],
)
