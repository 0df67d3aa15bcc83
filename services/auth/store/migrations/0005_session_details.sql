-- What a person sees of each of their sessions (issue 14): the device that logged in, from
-- where, and when it was last used. NULL for sessions opened before this migration, and for
-- last_seen_at until the session's first use is recorded (at most one write a minute per
-- session, batched: services/auth/store/last_seen.py).
-- Portable between MariaDB 10.11 and MySQL 8.4 (MySQL has no ADD COLUMN IF NOT EXISTS). One
-- statement, so a failed run leaves nothing half applied. Adding nullable columns at the end
-- is an instant (metadata-only) change in both engines.

ALTER TABLE sessions
    ADD COLUMN user_agent VARCHAR(256) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
    ADD COLUMN ip VARCHAR(45) CHARACTER SET ascii COLLATE ascii_bin NULL,
    ADD COLUMN last_seen_at DATETIME(6) NULL;
