-- How many times the account's password was changed (`ChangePassword`). A login stores its
-- session only while this is still what it was when the login read the password hash it
-- checked: a login whose check of the old password was in flight during a change must not
-- outlive the change that ended every other session. A rehash of the same password (a new
-- pepper or cost) does not count. Portable between MariaDB 10.11 and MySQL 8.4; one statement,
-- metadata-only in both engines (ALGORITHM=INSTANT: refused rather than a table copy).

ALTER TABLE users ADD COLUMN password_changes INT UNSIGNED NOT NULL DEFAULT 0, ALGORITHM=INSTANT;
