"""Seeded users, loaded in bulk once and cached between runs as MariaDB data directories.

Every table size gets two databases: `bench_<n>` with Gatehouse's schema (its migrations) and
`bench_peer_<n>` with fastapi-users' `user` table. Rows come from one file per database,
loaded with LOAD DATA on the primary and on the replica at once with the binlog off; every
row shares one precomputed bcrypt hash of `SEED_PASSWORD` (peppered for Gatehouse as the
service does it). The schemas themselves go through replication, so the replica's position
stays consistent and later writes replicate as usual.

After seeding, the stopped servers' data directories are copied under
`.state/bench/seed-<key>/`; the key covers the schema, the bcrypt cost and the MariaDB
version. Restoring copies them back, which is much faster than loading again; the replica
then re-points at the new primary port from its recorded GTID position.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import bcrypt
import pymysql

from devstack.mariadb import MariaDB
from devstack.stack import DataStores
from services.auth.store.migrate import MIGRATIONS_DIR, apply_migrations

SEED_PASSWORD = "bench-password-1"
PEER_EMAIL_DOMAIN = "bench.example"
# Bump when the layout of the seeded data changes: older caches are then ignored.
SEED_FORMAT = 1
# 10,000,000 rows take minutes; a load still running after this is stuck.
LOAD_TIMEOUT_SECONDS = 3600
_SERVERS = ("mariadb-primary", "mariadb-replica")
# Files the replica keeps about its primary: dropped on restore, so it starts unconfigured
# and devstack points it at the new primary port (it resumes from mysql.gtid_slave_pos).
_REPLICA_LINK_FILES = ("master.info", "multi-master.info", "relay-log.info")

_PEER_TABLE = """
CREATE TABLE IF NOT EXISTS `user` (
    id CHAR(36) NOT NULL,
    email VARCHAR(320) NOT NULL,
    hashed_password VARCHAR(1024) NOT NULL,
    is_active BOOL NOT NULL,
    is_superuser BOOL NOT NULL,
    is_verified BOOL NOT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY ix_user_email (email)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci
"""

Report = Callable[[str], None]


def ours_database(users: int) -> str:
    return f"bench_{users}"


def peer_database(users: int) -> str:
    return f"bench_peer_{users}"


def username(index: int) -> str:
    """The seeded user number `index` (1-based); sorted names follow sorted ids."""
    return f"u{index:09d}"


def peer_email(name: str) -> str:
    return f"{name}@{PEER_EMAIL_DOMAIN}"


def peer_user_id(index: int) -> str:
    return str(uuid.UUID(int=index))


def pepper_password(password: str, pepper: bytes) -> bytes:
    """What Gatehouse gives bcrypt (services.auth.passwords): base64(HMAC-SHA256(pepper, pw))."""
    return base64.b64encode(hmac.new(pepper, password.encode(), hashlib.sha256).digest())


@dataclass(frozen=True)
class SeedManifest:
    key: str
    sizes: tuple[int, ...]
    bcrypt_cost: int
    pepper: str  # "1:<secret>", as GATEHOUSE_PEPPERS
    password: str

    @property
    def pepper_secret(self) -> bytes:
        return self.pepper.partition(":")[2].encode()


def cache_key(bcrypt_cost: int) -> str:
    digest = hashlib.sha256()
    for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    digest.update(_PEER_TABLE.encode())
    version = subprocess.run(
        ["mariadbd", "--version"], capture_output=True, text=True, check=True
    ).stdout
    digest.update(f"{SEED_FORMAT}|{bcrypt_cost}|{version}".encode())
    return digest.hexdigest()[:16]


class SeedCache:
    """`.state/bench/seed-<key>`: data directories of both servers and a manifest."""

    def __init__(self, root: Path, bcrypt_cost: int) -> None:
        self.key = cache_key(bcrypt_cost)
        self.directory = root / f"seed-{self.key}"
        self.bcrypt_cost = bcrypt_cost

    @property
    def manifest_path(self) -> Path:
        return self.directory / "manifest.json"

    def manifest(self) -> SeedManifest | None:
        if not self.manifest_path.exists():
            return None
        fields = json.loads(self.manifest_path.read_text())
        fields["sizes"] = tuple(fields["sizes"])
        return SeedManifest(**fields)

    def restore_into(self, stores_dir: Path) -> None:
        """Copy the cached data directories where DataStores will look for them."""
        for server in _SERVERS:
            target = stores_dir / server / "data"
            target.parent.mkdir(parents=True, exist_ok=True)
            _copy_tree(self.directory / server / "data", target)
        unlink_replica(stores_dir / "mariadb-replica" / "data")

    def save_from(self, stores_dir: Path, manifest: SeedManifest) -> None:
        """Copy the stopped servers' data directories into the cache."""
        staging = self.directory.with_name(self.directory.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        for server in _SERVERS:
            _copy_tree(stores_dir / server / "data", staging / server / "data")
        (staging / "manifest.json").write_text(json.dumps(asdict(manifest)))
        shutil.rmtree(self.directory, ignore_errors=True)
        staging.rename(self.directory)


def unlink_replica(datadir: Path) -> None:
    """Forget the primary's address, so the replica can be pointed at a new port."""
    for name in _REPLICA_LINK_FILES:
        (datadir / name).unlink(missing_ok=True)
    for relay in datadir.glob("relay-bin.*"):
        relay.unlink()


def open_seeded_stores(
    cache: SeedCache, stores_dir: Path, sizes: list[int], report: Report
) -> tuple[DataStores, SeedManifest]:
    """Start the data stores in `stores_dir` (wiped) holding every size in `sizes`: restored
    from the cache, with sizes it lacks seeded now and added to it."""
    shutil.rmtree(stores_dir, ignore_errors=True)
    manifest = cache.manifest()
    if manifest is not None:
        started = time.monotonic()
        cache.restore_into(stores_dir)
        report(
            f"restored seeded users {list(manifest.sizes)} from {cache.directory} "
            f"in {time.monotonic() - started:.0f} s"
        )
    else:
        manifest = new_manifest(cache.key, cache.bcrypt_cost)
    stores = DataStores.start(stores_dir, report=report)
    missing = sorted(set(sizes) - set(manifest.sizes))
    if not missing:
        return stores, manifest
    try:
        manifest = asyncio.run(
            seed_sizes(stores, manifest, missing, stores_dir / "seed-files", report)
        )
    finally:
        stores.stop()
    started = time.monotonic()
    cache.save_from(stores_dir, manifest)
    report(f"cached the seeded data in {cache.directory} in {time.monotonic() - started:.0f} s")
    unlink_replica(stores_dir / "mariadb-replica" / "data")
    for transient in ("redis", "etcd"):
        shutil.rmtree(stores_dir / transient, ignore_errors=True)
    return DataStores.start(stores_dir, report=report), manifest


def _copy_tree(source: Path, target: Path) -> None:
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", "--reflink=auto", str(source), str(target)], check=True)


def new_manifest(key: str, bcrypt_cost: int) -> SeedManifest:
    return SeedManifest(
        key=key,
        sizes=(),
        bcrypt_cost=bcrypt_cost,
        pepper=f"1:{secrets.token_urlsafe(32)}",
        password=SEED_PASSWORD,
    )


async def seed_sizes(
    stores: DataStores, manifest: SeedManifest, sizes: list[int], work_dir: Path, report: Report
) -> SeedManifest:
    """Create and fill both databases of each size in `sizes`; the manifest that results."""
    ours_hash = bcrypt.hashpw(
        pepper_password(manifest.password, manifest.pepper_secret),
        bcrypt.gensalt(manifest.bcrypt_cost),
    )
    peer_hash = bcrypt.hashpw(manifest.password.encode(), bcrypt.gensalt(manifest.bcrypt_cost))
    for users in sizes:
        started = time.monotonic()
        ours, peer = ours_database(users), peer_database(users)
        for database in (ours, peer):
            stores.create_database(database)
        await apply_migrations(stores.migration_dsn_of(ours), timeout=120.0)
        _execute_in(stores.primary, peer, _PEER_TABLE)
        await asyncio.to_thread(stores.replication.wait_caught_up, 120.0)
        ours_file = _write_rows(work_dir / f"{ours}.tsv", users, _ours_row(ours_hash))
        peer_file = _write_rows(work_dir / f"{peer}.tsv", users, _peer_row(peer_hash.decode()))
        loads = [
            (server, database, table, columns, path)
            for server in (stores.primary, stores.replica)
            for database, table, columns, path in (
                (ours, "users", _OURS_COLUMNS, ours_file),
                (peer, "user", _PEER_COLUMNS, peer_file),
            )
        ]
        with ThreadPoolExecutor(max_workers=2) as pool:
            for failure in [f.exception() for f in [pool.submit(_load, *load) for load in loads]]:
                if failure is not None:
                    raise failure
        ours_file.unlink()
        peer_file.unlink()
        report(
            f"seeded {users:,} users into {ours} and {peer} in {time.monotonic() - started:.0f} s"
        )
        manifest = SeedManifest(
            **{**asdict(manifest), "sizes": tuple(sorted({*manifest.sizes, users}))}
        )
    return manifest


_OURS_COLUMNS = (
    "id, username, nickname, password_hash, pepper_version, avatar_key, version, "
    "created_at, updated_at"
)
_PEER_COLUMNS = "id, email, hashed_password, is_active, is_superuser, is_verified"


def _ours_row(password_hash: bytes) -> Callable[[int], str]:
    hashed = password_hash.decode()

    def row(index: int) -> str:
        name = username(index)
        stamp = "2026-01-01 00:00:00.000000"
        return f"{index}\t{name}\t{name}\t{hashed}\t1\t\\N\t1\t{stamp}\t{stamp}\n"

    return row


def _peer_row(password_hash: str) -> Callable[[int], str]:
    def row(index: int) -> str:
        return f"{peer_user_id(index)}\t{peer_email(username(index))}\t{password_hash}\t1\t0\t0\n"

    return row


def _write_rows(path: Path, users: int, row: Callable[[int], str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="ascii", buffering=1 << 20) as file:
        file.writelines(
            "".join(row(i) for i in range(start, min(users, start + 9_999) + 1))
            for start in range(1, users + 1, 10_000)
        )
    return path


def _execute_in(server: MariaDB, database: str, sql: str) -> None:
    with server.connect(database=database) as connection, connection.cursor() as cursor:
        cursor.execute(sql)


def _load(server: MariaDB, database: str, table: str, columns: str, path: Path) -> None:
    """LOAD DATA by the server itself (it runs as root here), binlog and checks off."""
    connection = pymysql.connect(
        unix_socket=str(server.socket_path),
        user="root",
        database=database,
        autocommit=True,
        connect_timeout=10,
        read_timeout=LOAD_TIMEOUT_SECONDS,
        write_timeout=LOAD_TIMEOUT_SECONDS,
    )
    with connection, connection.cursor() as cursor:
        for setting in ("sql_log_bin = 0", "unique_checks = 0", "foreign_key_checks = 0"):
            cursor.execute(f"SET SESSION {setting}")
        cursor.execute(
            f"LOAD DATA INFILE %s INTO TABLE `{table}` CHARACTER SET ascii ({columns})",
            (str(path),),
        )
