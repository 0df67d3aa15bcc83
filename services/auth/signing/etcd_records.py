"""The rotation state and the published public keys, as etcd holds them.

Public key records live under GATEHOUSE_JWT_KEYS_PREFIX + kid (signing/records.py;
the HTTP tier watches them); the state is one key under GATEHOUSE_JWT_ROTATION_PREFIX, written
only by a transaction that compares its mod revision. Every call is bounded by RPC_TIMEOUT.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

import aetcd
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from services.auth.signing.state import EMPTY, RotationState
from services.foundation.etcd import RPC_TIMEOUT, named_values
from services.foundation.jwk import thumbprint_kid


@dataclass(frozen=True)
class StoredState:
    state: RotationState
    revision: int  # the document's mod revision; 0 while there is none


def state_key(rotation_prefix: str) -> bytes:
    return f"{rotation_prefix}state".encode()


# etcd's default --max-txn-ops.
_MAX_TXN_OPS = 128


async def read_state(client: aetcd.Client, rotation_prefix: str) -> StoredState:
    """The state and its revision; MalformedState when the document is not one."""
    async with asyncio.timeout(RPC_TIMEOUT):
        stored = await client.get(state_key(rotation_prefix))
    if stored is None:
        return StoredState(EMPTY, 0)
    return StoredState(RotationState.from_json(stored.value), stored.mod_revision)


async def replace_state(
    client: aetcd.Client, rotation_prefix: str, state: RotationState, revision: int
) -> bool:
    """Write `state` if the stored one is still at `revision` (0: none yet); False if another
    writer came first (read it again and decide anew)."""
    key = state_key(rotation_prefix)
    async with asyncio.timeout(RPC_TIMEOUT):
        succeeded, _ = await client.transaction(
            compare=[client.transactions.mod(key) == revision],
            success=[client.transactions.put(key, state.to_json())],
            failure=[],
        )
    return bool(succeeded)


async def published_records(client: aetcd.Client, keys_prefix: str) -> dict[str, bytes]:
    """{record name (a kid): record} of every published public key."""
    async with asyncio.timeout(RPC_TIMEOUT):
        found = await client.get_prefix(keys_prefix.encode())
    strip = len(keys_prefix)
    return named_values(found, strip)


async def publish_under_state(
    client: aetcd.Client,
    keys_prefix: str,
    rotation_prefix: str,
    kid: str,
    record: bytes,
    revision: int,
) -> bool:
    """Put the public key `record` of `kid` (without a lease: tokens outlive replicas), if the
    rotation state is still at `revision`; False if it changed (read it again: the key may have
    been retired meanwhile, and must then stay withdrawn)."""
    async with asyncio.timeout(RPC_TIMEOUT):
        succeeded, _ = await client.transaction(
            compare=[client.transactions.mod(state_key(rotation_prefix)) == revision],
            success=[client.transactions.put(f"{keys_prefix}{kid}".encode(), record)],
            failure=[],
        )
    return bool(succeeded)


def record_public_key(record: bytes) -> str | None:
    """The PEM public key of a record, or None when it is malformed."""
    try:
        pem = json.loads(record).get("public_key")
    except (ValueError, AttributeError, RecursionError):
        return None
    return pem if isinstance(pem, str) else None


def record_kid(record: bytes) -> str | None:
    """The thumbprint kid of a record's public key, whatever name the record has (records
    from releases before thumbprints are named by the legacy kid); None when malformed."""
    pem = record_public_key(record)
    if pem is None:
        return None
    try:
        key = serialization.load_pem_public_key(pem.encode())
    except (ValueError, TypeError, UnsupportedAlgorithm):
        # A key type cryptography cannot load (the HTTP tier skips such a record too): none
        # of ours. Raising would fail every sync that withdraws a retired key.
        return None
    if not isinstance(key, Ed25519PublicKey):
        return None
    return thumbprint_kid(
        key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )


async def withdraw(
    client: aetcd.Client, keys_prefix: str, kid: str, records: dict[str, bytes]
) -> list[str]:
    """Delete the record of `kid` and every other record of the same public key (the one under
    its legacy kid, from releases before thumbprints), in one transaction: a replica that dies
    midway leaves no copy of a withdrawn key behind. The names deleted.

    A copy is found by its key, as the HTTP tier reads it (the PEM parsed), never by the PEM's
    text: a copy spelled otherwise would survive and keep the key trusted."""
    names = [name for name, record in records.items() if name == kid or record_kid(record) == kid]
    # A key has at most two records; batches keep etcd's 128 operations per transaction even
    # when someone who can write the prefix made more copies.
    for start in range(0, len(names), _MAX_TXN_OPS):
        deletes = [
            client.transactions.delete(f"{keys_prefix}{name}".encode())
            for name in names[start : start + _MAX_TXN_OPS]
        ]
        async with asyncio.timeout(RPC_TIMEOUT):
            await client.transaction(compare=[], success=deletes, failure=[])
    return names
