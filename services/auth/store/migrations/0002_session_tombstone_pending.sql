-- Sessions revoked while their tombstone could not be written to Redis (services/auth/revocations.py).
-- Portable between MariaDB 10.11 and MySQL 8.4 (MySQL has no ADD COLUMN IF NOT EXISTS). One
-- statement, so a failed run leaves nothing half applied. Both engines run it online (writes to
-- sessions continue, apart from short metadata locks at its start and end).
-- The index holds (flag, expiry, primary key): every auth replica's poll for flagged sessions
-- reads only the few flagged entries, from the index alone.

ALTER TABLE sessions
    ADD COLUMN tombstone_pending TINYINT UNSIGNED NOT NULL DEFAULT 0,
    ADD KEY sessions_tombstone_pending (tombstone_pending, expires_at);
