-- The write floor (services/auth/store/revocations.py): a primary time before which Redis's
-- record of writes may be incomplete, because a write's record (gh:w, the new profile) did not
-- reach Redis. Every auth replica reads it with the revocation flags and uses
-- max(gh:since, floor) as gh:since. One row (id 1) that only rises: the table never grows.
-- Portable between MariaDB 10.11 and MySQL 8.4; safe to run again.

CREATE TABLE IF NOT EXISTS write_floor (
    id TINYINT UNSIGNED NOT NULL,
    floor DATETIME(6) NOT NULL,
    PRIMARY KEY (id)
) ENGINE=InnoDB;

INSERT IGNORE INTO write_floor (id, floor) VALUES (1, '1970-01-01 00:00:01');
