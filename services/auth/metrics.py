"""Prometheus metrics of the auth service (exposed on the ops port)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from services.foundation.rpc.server_metrics import LATENCY_BUCKETS

DISCOVERY_REGISTERED = Gauge(
    "gatehouse_auth_discovery_registered", "1 while the discovery record is held in etcd"
)
WORKER_ID_HELD = Gauge(
    "gatehouse_auth_worker_id_held", "1 while a Snowflake worker id is held in etcd"
)
USER_ID_SOURCE = Gauge(
    "gatehouse_auth_user_id_source",
    "1 for the source new user ids come from: etcd (a held Snowflake worker id) or database "
    "(blocks the MySQL primary hands out while no worker id is held)",
    ["source"],
)
USER_ID_BLOCKS = Counter(
    "gatehouse_auth_user_id_blocks_total", "User id blocks taken from the MySQL primary"
)
USER_ID_COLLISIONS = Counter(
    "gatehouse_auth_user_id_collisions_total",
    "Signups refused because their new user id was already in use (nothing was stored)",
)
HASH_QUEUE_DEPTH = Gauge("gatehouse_auth_hash_queue_depth", "Password hashes queued or running")
HASHES = Counter(
    "gatehouse_auth_password_hashes_total",
    "Password hashes that reached a hashing thread: computed, or skipped because their call "
    "was cancelled, their deadline had passed or the service was shutting down",
    ["outcome"],
)
REHASHES_POSTPONED = Counter(
    "gatehouse_auth_rehashes_postponed_total",
    "Passwords a login would have moved to the current pepper and cost, left for a later "
    "login: the hasher refused the hash (overloaded: its queue or a client's share full, or "
    "shutting down) or the primary failed (database)",
    ["cause"],
)
LOGINS = Counter(
    "gatehouse_auth_logins_total",
    "Authenticate calls by outcome: success, wrong_password, unknown_user, throttled (refused "
    "by the login throttle before any hash), overloaded, pepper_missing (the hash's pepper "
    "version is no longer in GATEHOUSE_PEPPERS), locked (the right password of a "
    "locked account), password_changed (the password checked was replaced by a change while "
    "the login ran: no session), too_long (a password longer than any a signup takes: refused "
    "before the throttle and the hash), not_ready (no signing key synced with etcd yet, as in a "
    "replica started while etcd was away: refused before the throttle and the hash, DRAINING so "
    "the HTTP tier retries elsewhere)",
    ["outcome"],
)
THROTTLED = Counter(
    "gatehouse_auth_throttled_attempts_total",
    "Password checks and signups the throttle refused, by the limit that refused them: "
    "account_ip, device, client_ip, signup_ip",
    ["limit"],
)
THROTTLE_WAITS = Counter(
    "gatehouse_auth_throttle_waits_total",
    "Password checks that waited for earlier checks of the same keys to end before the throttle "
    "judged them (they would have been refused only while those ran), by attempt key kind: "
    "account_ip, device",
    ["kind"],
)
NO_CLIENT_IP = Counter(
    "gatehouse_auth_calls_without_client_ip_total",
    "Logins and signups whose caller sent no client IP (reason unknown: an HTTP tier older "
    "than the throttle) or an invalid one (reason invalid); they share the IP key 'unknown'",
    ["reason"],
)
THROTTLE_IN_MEMORY = Gauge(
    "gatehouse_auth_throttle_in_memory",
    "1 while the login throttle counts in this replica's memory because Redis is unreachable "
    "(limits then hold per replica, not for the whole service)",
)

# data layer
DB_QUERY_SECONDS = Histogram(
    "gatehouse_auth_db_query_seconds",
    "Time of one MySQL operation (a statement or a transaction), pool wait included",
    ["role", "operation"],
    buckets=LATENCY_BUCKETS,
)
DB_READS = Counter(
    "gatehouse_auth_db_reads_total",
    "Account reads by the server that answered them (replica or primary)",
    ["target"],
)
REPLICA_LAG = Gauge(
    "gatehouse_auth_replica_lag_seconds",
    "How far behind the primary each read replica's applied heartbeat is, as this replica sees it",
    ["replica"],
)
REDIS_COMMAND_SECONDS = Histogram(
    "gatehouse_auth_redis_command_seconds",
    "Time of one Redis round trip, by operation",
    ["operation"],
    buckets=LATENCY_BUCKETS,
)
REDIS_ERRORS = Counter(
    "gatehouse_auth_redis_errors_total",
    "Redis operations that failed or timed out (the caller fell back to MySQL)",
)
REDIS_BREAKER_OPEN = Gauge(
    "gatehouse_auth_redis_breaker_open",
    "1 while a Redis circuit breaker is open (calls skip Redis), by breaker (cache, scripts)",
    ["breaker"],
)
REDIS_MAY_EVICT = Gauge(
    "gatehouse_auth_redis_may_evict",
    "1 while the Redis server may evict keys (a maxmemory with a policy other than noeviction):"
    " the cache is not used and every read goes to MySQL",
)
REDIS_BREAKER_TRANSITIONS = Counter(
    "gatehouse_auth_redis_breaker_transitions_total",
    "Redis circuit breaker state changes, by breaker (cache, scripts) and new state (open, closed)",
    ["breaker", "state"],
)
WRITE_FLOOR_RAISES = Counter(
    "gatehouse_auth_write_floor_raises_total",
    "Acknowledged writes whose record missed Redis and which raised the write floor on the"
    " primary instead (each waited for the read replicas and a revocation lease)",
)
CACHE_LOOKUPS = Counter(
    "gatehouse_auth_cache_lookups_total",
    "Cache lookups by cache (session, profile) and result (hit, miss)",
    ["cache", "result"],
)
LOCAL_CACHE_LOOKUPS = Counter(
    "gatehouse_auth_local_cache_lookups_total",
    "Reads of Redis values tried on the in-process copies, by result: hit (answered without"
    " reading Redis) or miss (read Redis)",
    ["result"],
)
LOCAL_CACHE_ANSWERING = Gauge(
    "gatehouse_auth_local_cache_answering",
    "1 while the in-process copies of Redis values may answer: Redis's invalidations have proven"
    " to arrive within the last GATEHOUSE_LOCAL_CACHE_HEARTBEAT_INTERVAL",
)
LOCAL_CACHE_INVALIDATIONS = Counter(
    "gatehouse_auth_local_cache_invalidations_total",
    "Invalidations Redis sent for the in-process copies (a flush counts once)",
)
LOCAL_CACHE_ENTRIES = Gauge(
    "gatehouse_auth_local_cache_entries", "Redis values copied in process now"
)
PRIMARY_AVAILABLE = Gauge(
    "gatehouse_auth_primary_available",
    "1 while the MySQL primary answers its heartbeat in time; 0 while it counts as down (writes,"
    " logins and signups are then refused at once, reads served from Redis and the replicas)",
)
PRIMARY_REFUSALS = Counter(
    "gatehouse_auth_primary_refusals_total",
    "MySQL primary operations refused at once, without a query, while the primary counted as"
    " down, by operation",
    ["operation"],
)
REVOCATIONS_IN_DOUBT = Counter(
    "gatehouse_auth_revocations_in_doubt_total",
    "Transactions that revoke sessions and failed once their COMMIT was sent (it may have "
    "landed): their sessions were recorded as revoked all the same",
)
DEGRADED_READS = Counter(
    "gatehouse_auth_degraded_reads_total",
    "Session and profile reads answered while the MySQL primary counted as down (from Redis and"
    " the read replicas)",
)

# purging expired sessions
SESSIONS_PURGED = Counter(
    "gatehouse_auth_sessions_purged_total",
    "Expired session rows this replica deleted from the MySQL primary",
)
SESSION_PURGE_RUNS = Counter(
    "gatehouse_auth_session_purge_runs_total",
    "Purge runs by outcome: done (every purgeable row deleted), lock_held_elsewhere (another"
    " replica purges), failed (the primary failed or counted as down; retried next interval)",
    ["outcome"],
)
SESSION_PURGE_BATCH_SECONDS = Histogram(
    "gatehouse_auth_session_purge_batch_seconds",
    "Time of one purge batch (finding up to a batch of expired rows and deleting them),"
    " pauses for the rate limit excluded",
    buckets=LATENCY_BUCKETS,
)
LAST_SEEN_FLUSHES = Counter(
    "gatehouse_auth_last_seen_flushes_total",
    "Flushes of recorded session use (sessions.last_seen_at) by outcome: written, skipped "
    "(the primary is down; kept for the next flush) or failed (kept likewise)",
    ["outcome"],
)
LAST_SEEN_DROPPED = Counter(
    "gatehouse_auth_last_seen_dropped_total",
    "Session uses not recorded because GATEHOUSE_LAST_SEEN_MAX_PENDING were already waiting",
)
ACCOUNT_CHANGES = Counter(
    "gatehouse_auth_account_changes_total",
    "Completed password changes (password_changed), account deletions (account_deleted, by "
    "their owner; operator_deleted, by `gatehouse users delete`), locks (account_locked) and "
    "unlocks (account_unlocked)",
    ["change"],
)
SIGNING_KEYS = Gauge(
    "gatehouse_auth_signing_keys",
    "Private keys this replica holds (its key folder), by rotation state: signing, verify-only, "
    "retiring, retired",
    ["state"],
)
SIGNING_WITH_FALLBACK = Gauge(
    "gatehouse_auth_signing_with_fallback",
    "1 while this replica signs with another key than the rotation state's signing key (it does "
    "not hold that one: its key folder lags the Secret)",
)
ROTATION_STATE_RESTORED = Counter(
    "gatehouse_auth_rotation_state_restored_total",
    "Times this replica found the signing keys' rotation state gone from etcd, older there "
    "than the replicas' copy in MySQL, or missing a retirement the copy holds, and wrote back "
    "the copy's (with every retirement known): etcd lost its data (emptied, or restored from "
    "an older snapshot)",
)
ROTATION_STATE_COPY_FAILURES = Counter(
    "gatehouse_auth_rotation_state_copy_failures_total",
    "Reads and writes of the rotation state's copy in MySQL that failed (the primary out of "
    "reach); tried again at every key sync. While it cannot be read, a replica that finds no "
    "state in etcd starts none",
)
KEY_FOLDER_REJECTED = Counter(
    "gatehouse_auth_key_folder_rejected_total",
    "Reads of the key folder that found it unusable (the last good keys stayed in use)",
)
