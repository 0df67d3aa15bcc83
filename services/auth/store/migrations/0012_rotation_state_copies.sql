-- The auth replicas' copy of the signing keys' rotation state (services/auth/signing/ring.py):
-- etcd holds the state; a replica that finds it gone or older than this copy (etcd emptied, or
-- restored from an older snapshot) writes the copy back instead of starting a fresh state,
-- which could make a retired key sign, or publish a withdrawn one again. One row per rotation
-- prefix (several Gatehouse installs may share a database), keyed by the prefix's SHA-256:
-- the prefix itself has no length limit. A row changes only to a higher generation.
-- Portable between MariaDB 10.11 and MySQL 8.4; safe to run again.

CREATE TABLE IF NOT EXISTS rotation_state_copies (
    prefix_sha256 BINARY(32) NOT NULL,
    rotation_prefix TEXT NOT NULL,
    generation BIGINT UNSIGNED NOT NULL,
    document MEDIUMBLOB NOT NULL,
    updated_at DATETIME(6) NOT NULL,
    PRIMARY KEY (prefix_sha256)
) ENGINE=InnoDB;
