-- Deleted accounts (issue 14): the row stays, erased, so that the id and (unless the
-- deployment reuses deleted usernames) the username remain reserved, and the account's revoked
-- session rows keep their foreign key until they expire. NULL: a live account.
-- Portable between MariaDB 10.11 and MySQL 8.4; one statement; instant in both engines.

ALTER TABLE users
    ADD COLUMN deleted_at DATETIME(6) NULL;
