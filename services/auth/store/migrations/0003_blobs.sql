-- Blobs of the HTTP tier's `database` blob store: processed profile pictures (256x256 WebP,
-- tens of KiB). Keys are content-addressed ("<user id>/<sha256>.webp"), so a row never changes
-- once written. MEDIUMBLOB holds up to 16 MiB; one RPC frame (1 MiB) bounds what arrives.

CREATE TABLE IF NOT EXISTS blobs (
    blob_key VARCHAR(200) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    content_type VARCHAR(100) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    data MEDIUMBLOB NOT NULL,
    created_at DATETIME(6) NOT NULL,
    PRIMARY KEY (blob_key)
) ENGINE=InnoDB;
