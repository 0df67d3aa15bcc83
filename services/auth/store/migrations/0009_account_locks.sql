-- Locked accounts (issue 15): `gatehouse users lock` sets locked_at, which refuses every login
-- of the account until `gatehouse users unlock` clears it. NULL: not locked.
-- Portable between MariaDB 10.11 and MySQL 8.4; one statement. Adding a nullable column at the
-- end is metadata-only in both engines: naming ALGORITHM=INSTANT makes the engine refuse the
-- statement rather than fall back to copying the table while logins wait.

ALTER TABLE users ADD COLUMN locked_at DATETIME(6) NULL, ALGORITHM=INSTANT;
