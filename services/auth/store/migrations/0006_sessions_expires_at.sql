-- The index the purge of expired sessions reads (services/auth/store/session_purge.py): it finds
-- the oldest expired rows, in (expires_at, id) order, without scanning live ones.
-- Portable between MariaDB 10.11 and MySQL 8.4, which both build a secondary index in place
-- without copying the table and with reads and writes going on (LOCK=NONE), apart from short
-- metadata locks at its start and end. Naming the algorithm and the lock makes the engine refuse
-- the statement rather than fall back to a blocking table copy. One statement, so a failed run
-- leaves nothing half applied.

ALTER TABLE sessions ADD KEY sessions_expires_at (expires_at), ALGORITHM=INPLACE, LOCK=NONE;
