-- The counter behind the user id blocks the primary hands out while a replica holds no etcd
-- worker id (services/auth/store/id_blocks.py). One row (id 1); values only ever increase.
-- Portable between MariaDB 10.11 and MySQL 8.4; both statements can run again.

CREATE TABLE IF NOT EXISTS user_id_blocks (
    id TINYINT UNSIGNED NOT NULL,
    next_counter BIGINT UNSIGNED NOT NULL,
    PRIMARY KEY (id)
) ENGINE=InnoDB;

INSERT IGNORE INTO user_id_blocks (id, next_counter) VALUES (1, 0);
