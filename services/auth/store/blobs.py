"""Blobs in MySQL (table `blobs`): the storage behind the HTTP tier's `database` blob store.

Keys are content-addressed, so a row never changes once written: a replica that has the row
has the right bytes, and reads try a replica first and the primary only when the replica lacks
the row (not replicated yet) or fails. A replica lags, though, and may still hold a blob the
primary has deleted (the picture of a deleted account must be 404 within a minute), so a blob
found on a replica is served only once the primary confirms the key by its index, without the
bytes; while the primary is unreachable the replica's copy is served as it is (no delete can
commit meanwhile). The blobs get their own pools, so large rows never keep account queries
waiting for a connection.

    blobs = await BlobTable.open(settings, primary_health=store.primary_health)
    await blobs.put(key, content_type, data)   # writing the same key again keeps the first row
    await blobs.get(key) -> Blob | None
    await blobs.delete(key) -> None             # an absent key is no error
    await blobs.close()
"""

from __future__ import annotations

import logging
import random
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from services.auth.settings import AuthSettings
from services.auth.store.database import Database, DatabaseError, Row
from services.auth.store.health import PrimaryHealth

log = logging.getLogger(__name__)

KEY_MAX_LENGTH = 200
# The id as the account's deletion matches it (`<id>/%`): no leading zero, so that no key of
# the owner escapes that deletion under another spelling of the same number.
_OWNED_KEY = re.compile(r"(?P<user_id>[1-9][0-9]{0,19})/.+")
# What a profile may name: the HTTP tier's picture keys, the SHA-256 of the stored WebP.
_PICTURE_KEY = re.compile(r"(?P<user_id>[1-9][0-9]{0,19})/[0-9a-f]{64}\.webp")
CONTENT_TYPE_MAX_LENGTH = 100

_INSERT = """
INSERT INTO blobs (blob_key, content_type, data, created_at) VALUES (%s, %s, %s, NOW(6))
ON DUPLICATE KEY UPDATE blob_key = blob_key
"""
_SELECT = "SELECT content_type, data FROM blobs WHERE blob_key = %s"
_EXISTS = "SELECT 1 AS present FROM blobs WHERE blob_key = %s"
_DELETE = "DELETE FROM blobs WHERE blob_key = %s"


WEBP_CONTENT_TYPE = "image/webp"
_RIFF_HEADER = struct.Struct("<4sI4s")  # "RIFF", the size of what follows, "WEBP"
_CHUNK_HEADER = struct.Struct("<4sI")  # FourCC, the size of the payload
_VP8_START_CODE = b"\x9d\x01\x2a"  # after a lossy frame's 3-byte tag (RFC 6386, 9.1)
_VP8L_SIGNATURE = b"\x2f"  # a lossless bitstream's first byte
_BITSTREAMS = (b"VP8 ", b"VP8L")
# The chunks that may follow VP8X (the WebP container specification) in a still picture:
# colour profile, alpha, the bitstreams, metadata. The HTTP tier stores no animation (a GIF's
# first frame), and an animation's frames would hide bytes in chunks of their own.
_EXTENDED_CHUNKS = frozenset({b"ICCP", b"ALPH", *_BITSTREAMS, b"EXIF", b"XMP "})


class InvalidBlob(ValueError):
    """A key, content type or body that the table cannot hold; the message says which."""


class NotWebp(InvalidBlob):
    """A blob that is not a WebP picture: only re-encoded pictures are stored (and served)."""


@dataclass(frozen=True)
class Blob:
    content_type: str
    data: bytes


def check_blob_key(key: str) -> None:
    if not (key.isascii() and key.isprintable() and 0 < len(key) <= KEY_MAX_LENGTH):
        raise InvalidBlob(f"a blob key is 1 to {KEY_MAX_LENGTH} printable ASCII characters")


def blob_owner(key: str) -> int | None:
    """The user id a blob key starts with; None when it names no user."""
    return _user_id(_OWNED_KEY, key)


def picture_owner(key: str) -> int | None:
    """The user id of a picture key (`<user id>/<sha256>.webp`); None for any other key."""
    return _user_id(_PICTURE_KEY, key)


def _user_id(key_pattern: re.Pattern[str], key: str) -> int | None:
    match = key_pattern.fullmatch(key)
    return int(match.group("user_id")) if match else None


def check_blob(key: str, content_type: str, data: bytes) -> None:
    check_blob_key(key)
    if not (
        content_type.isascii()
        and content_type.isprintable()
        and 0 < len(content_type) <= CONTENT_TYPE_MAX_LENGTH
    ):
        raise InvalidBlob(
            f"a content type is 1 to {CONTENT_TYPE_MAX_LENGTH} printable ASCII characters"
        )
    if not data:
        raise InvalidBlob("a blob cannot be empty")
    if content_type != WEBP_CONTENT_TYPE:
        raise NotWebp(f"a blob is a WebP picture: its content type must be {WEBP_CONTENT_TYPE}")
    if not is_webp_container(data):
        raise NotWebp("a blob is a WebP picture: its bytes must be one RIFF WEBP container")


def is_webp_container(data: bytes) -> bool:
    """Whether `data` is exactly one RIFF container of WebP: the header's size covers the rest
    of the bytes, nothing before it or after, and the chunks inside tile it exactly. Either one
    chunk, a WebP bitstream with its signature, or the extended header followed by chunks of a
    still picture's extended format only, one bitstream with its signature among them. A header
    alone, or a chunk of any other name, would let any bytes (a page, a script) ride in a file
    served as a picture."""
    if len(data) < _RIFF_HEADER.size:
        return False
    riff, size, form = _RIFF_HEADER.unpack_from(data)
    if not (riff == b"RIFF" and form == b"WEBP" and size == len(data) - 8):
        return False
    chunks = _webp_chunks(data)
    if not chunks:
        return False
    (first, _), rest = chunks[0], chunks[1:]
    if first != b"VP8X":
        return not rest and _is_a_bitstream(data, *chunks[0])
    if any(fourcc not in _EXTENDED_CHUNKS for fourcc, _ in rest):
        return False
    bitstreams = [chunk for chunk in rest if chunk[0] in _BITSTREAMS]
    return len(bitstreams) == 1 and _is_a_bitstream(data, *bitstreams[0])


def _webp_chunks(data: bytes) -> list[tuple[bytes, int]]:
    """Each chunk after the RIFF header as (FourCC, offset of its payload); none when the
    bytes do not make whole chunks to their end."""
    chunks = []
    offset = _RIFF_HEADER.size
    while offset < len(data):
        if offset + _CHUNK_HEADER.size > len(data):
            return []
        fourcc, length = _CHUNK_HEADER.unpack_from(data, offset)
        payload = offset + _CHUNK_HEADER.size
        end = payload + length + (length & 1)  # a chunk of odd length has a padding byte
        if not (fourcc.isascii() and fourcc.strip().isalnum()) or end > len(data):
            return []
        chunks.append((fourcc, payload))
        offset = end
    return chunks


def _is_a_bitstream(data: bytes, fourcc: bytes, payload: int) -> bool:
    if fourcc == b"VP8 ":
        return data[payload + 3 : payload + 6] == _VP8_START_CODE
    if fourcc == b"VP8L":
        return data[payload : payload + 1] == _VP8L_SIGNATURE
    return False


class BlobTable:
    def __init__(self, primary: Database, replicas: Sequence[Database]) -> None:
        self._primary = primary
        self._replicas = tuple(replicas)

    @classmethod
    async def open(
        cls, settings: AuthSettings, *, primary_health: PrimaryHealth | None = None
    ) -> BlobTable:
        """Pools of their own that connect lazily: opening needs no reachable server. With
        `primary_health` (the account store's), writes fail at once while the primary is down."""
        primary, replicas = await Database.open_all(settings, primary_health=primary_health)
        return cls(primary, replicas)

    async def close(self) -> None:
        for database in (self._primary, *self._replicas):
            await database.close()

    async def put(self, key: str, content_type: str, data: bytes) -> None:
        check_blob(key, content_type, data)
        await self._primary.execute("put_blob", _INSERT, (key, content_type, data))

    async def get(self, key: str) -> Blob | None:
        check_blob_key(key)
        if self._replicas:
            replica = random.choice(self._replicas)
            try:
                row = await replica.fetch_one("get_blob", _SELECT, (key,))
            except DatabaseError as exc:
                log.debug("blob read on a replica failed, reading the primary: %s", exc)
            else:
                if row is not None:
                    return _blob_from(row) if await self._not_deleted(key) else None
        row = await self._primary.fetch_one("get_blob", _SELECT, (key,))
        return _blob_from(row) if row is not None else None

    async def _not_deleted(self, key: str) -> bool:
        """Whether the primary still has `key`; True when it cannot say (unreachable)."""
        try:
            return await self._primary.fetch_one("blob_exists", _EXISTS, (key,)) is not None
        except DatabaseError as exc:
            log.debug(
                "could not confirm blob %s on the primary; serving the replica's: %s", key, exc
            )
            return True

    async def delete(self, key: str) -> None:
        check_blob_key(key)
        await self._primary.execute("delete_blob", _DELETE, (key,))


def _blob_from(row: Row) -> Blob:
    return Blob(content_type=row["content_type"], data=row["data"])
