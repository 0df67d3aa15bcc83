-- Accounts, sessions and the replication heartbeat.
-- Portable between MariaDB 10.11 and MySQL 8.4. IF NOT EXISTS makes a run that failed halfway
-- (DDL commits implicitly, statement by statement) safe to repeat.

CREATE TABLE IF NOT EXISTS users (
    id BIGINT UNSIGNED NOT NULL,
    -- ascii_general_ci: 'Alice' and 'alice' collide in the unique index; stored as registered.
    username VARCHAR(30) CHARACTER SET ascii COLLATE ascii_general_ci NOT NULL,
    nickname VARCHAR(30) CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci NOT NULL,
    password_hash VARBINARY(60) NOT NULL,
    pepper_version SMALLINT UNSIGNED NOT NULL,
    avatar_key VARCHAR(200) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
    version INT UNSIGNED NOT NULL,
    created_at DATETIME(6) NOT NULL,
    updated_at DATETIME(6) NOT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY users_username (username)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE IF NOT EXISTS sessions (
    -- A random URL-safe token: case matters, hence ascii_bin.
    id VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    user_id BIGINT UNSIGNED NOT NULL,
    created_at DATETIME(6) NOT NULL,
    expires_at DATETIME(6) NOT NULL,
    revoked_at DATETIME(6) NULL,
    PRIMARY KEY (id),
    KEY sessions_user_id (user_id),
    CONSTRAINT sessions_user FOREIGN KEY (user_id) REFERENCES users (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- One row (id 1), bumped to the primary's NOW(6) by every auth replica; read on a replica it
-- tells up to which primary time that replica has applied the binlog.
CREATE TABLE IF NOT EXISTS replication_heartbeat (
    id TINYINT UNSIGNED NOT NULL,
    beat DATETIME(6) NOT NULL,
    PRIMARY KEY (id)
) ENGINE=InnoDB;

INSERT IGNORE INTO replication_heartbeat (id, beat) VALUES (1, NOW(6));
