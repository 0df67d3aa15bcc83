"""`gatehouse keys list|rotate|withdraw|peppers`: signing keys and password peppers.

Run in an auth pod (`kubectl exec deploy/<release>-auth -- gatehouse keys ...`): the commands
read that pod's key folder and its settings (the one config loader), and etcd. `peppers` asks
the pod's auth replica (AdminPepperUsage). Progress goes to stderr, results to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aetcd

from services.auth.settings import AuthSettings
from services.auth.signing.etcd_records import published_records, read_state, record_kid
from services.auth.signing.folder import FolderKey, KeyFolderError, read_key_folder
from services.auth.signing.records import key_records
from services.auth.signing.rotation import Plan, Rotation, RotationRefused
from services.auth.signing.sources import FixedKey
from services.auth.signing.state import MalformedState
from services.auth.store.database import Database
from services.auth.store.rotation_copy import RotationStateCopies
from services.cli import output
from services.cli.errors import EXIT_OK, EXIT_USAGE, CommandFailed
from services.cli.options import common_options
from services.cli.replica import replica_for
from services.contract import auth_methods as methods
from services.contract import auth_pb2 as pb
from services.foundation.config import ConfigError, load_settings
from services.foundation.etcd import close_quietly, connect

PEPPER_USAGE_TIMEOUT = 120.0
# Seconds a write of the rotation state's copy may take (GATEHOUSE_MYSQL_TIMEOUT if shorter).
COPY_TIMEOUT = 5.0


def register(groups: Any) -> None:
    parser: argparse.ArgumentParser = groups.add_parser(
        "keys", help="signing keys (list, rotate, withdraw) and password peppers"
    )
    commands = parser.add_subparsers(
        title="commands", dest="command", metavar="{list,rotate,withdraw,peppers}"
    )
    commands.required = True
    listing = commands.add_parser(
        "list", help="each signing key's state, folder and publication", parents=[common_options()]
    )
    listing.set_defaults(run=list_keys)
    rotate = commands.add_parser(
        "rotate",
        help="publish the next key, wait the propagation delay, then sign with it (steps 1-3)",
        parents=[common_options()],
    )
    rotate.add_argument("--kid", help="the next key, when the folder holds more than one")
    rotate.set_defaults(run=rotate_keys)
    withdrawal = commands.add_parser(
        "withdraw",
        help="retire a key that does not sign and delete its public records now: the tokens it"
        " signed are refused from then on (a key put in the Secret by mistake, or leaked)",
        parents=[common_options()],
    )
    withdrawal.add_argument(
        "kid",
        help="the key's kid, as `gatehouse keys list` shows it (one that starts with '-' goes"
        " after '--': withdraw [--now] -- KID)",
    )
    withdrawal.add_argument(
        "--now",
        action="store_true",
        help="also a retiring key, before its retire time: users signed in with its tokens"
        " must log in again",
    )
    withdrawal.set_defaults(run=withdraw_key)
    peppers = commands.add_parser(
        "peppers", help="password hashes per pepper version", parents=[common_options()]
    )
    peppers.set_defaults(run=pepper_usage)


def auth_settings() -> AuthSettings:
    try:
        return load_settings(AuthSettings)
    except ConfigError as exc:
        raise CommandFailed(f"invalid configuration: {exc}", EXIT_USAGE) from None


def folder_keys(settings: AuthSettings) -> dict[str, FolderKey]:
    """The pod's key folder, or the one key of GATEHOUSE_JWT_PRIVATE_KEY."""
    if settings.jwt_private_key is not None:
        return FixedKey(settings.jwt_private_key).keys
    try:
        return read_key_folder(Path(settings.jwt_keys_dir))
    except KeyFolderError as exc:
        raise CommandFailed(str(exc)) from None


@asynccontextmanager
async def etcd_client(settings: AuthSettings) -> AsyncIterator[aetcd.Client]:
    client = connect(settings.etcd_access, 0)
    try:
        yield client
    except (MalformedState, RotationRefused) as exc:
        raise CommandFailed(str(exc)) from None
    except (aetcd.exceptions.ClientError, TimeoutError, OSError) as exc:
        raise CommandFailed(
            f"etcd at {', '.join(settings.etcd_endpoints)} did not answer ({type(exc).__name__}:"
            f" {exc}); check GATEHOUSE_ETCD_ENDPOINTS and etcd's health"
        ) from None
    finally:
        await close_quietly(client)


def shown_time(epoch: float | None) -> str:
    return output.shown_time(_epoch_ms(epoch), none="-")


def rfc3339(epoch: float | None) -> str | None:
    return output.rfc3339(_epoch_ms(epoch))


def _epoch_ms(epoch: float | None) -> int:
    return 0 if epoch is None else int(epoch * 1000)


async def list_keys(args: argparse.Namespace) -> int:
    settings = auth_settings()
    folder = folder_keys(settings)
    async with etcd_client(settings) as client:
        stored = await read_state(client, settings.jwt_rotation_prefix)
        records = await published_records(client, settings.jwt_keys_prefix)
    published: dict[str, list[str]] = {}
    for name, record in records.items():
        published.setdefault(record_kid(record) or name, []).append(name)
    state = stored.state
    kids = sorted({*state.keys, *folder, *published}, key=lambda k: _order(state.state_of(k), k))
    rows: list[dict[str, Any]] = []
    human_rows: list[tuple[str, ...]] = []
    for kid in kids:
        entry = state.keys.get(kid)
        since, retire_at = (entry.since, entry.retire_at) if entry else (None, None)
        file_name = folder[kid].file_name if kid in folder else None
        names = sorted(published.get(kid, []))
        rows.append(
            {
                "kid": kid,
                "state": state.state_of(kid),
                "since": rfc3339(since),
                "retire_at": rfc3339(retire_at),
                "in_folder": file_name is not None,
                "file": file_name,
                "published": names,
            }
        )
        human_rows.append(
            (
                kid,
                state.state_of(kid),
                shown_time(since),
                shown_time(retire_at),
                file_name or "no",
                "yes" if names else "no",
            )
        )
    human = output.table(("KID", "STATE", "SINCE", "RETIRES", "IN FOLDER", "PUBLISHED"), human_rows)
    output.show(args, human, {"keys": rows})
    return EXIT_OK


def _order(state: str, kid: str) -> tuple[int, str]:
    rank = {"signing": 0, "verify-only": 1, "retiring": 2, "retired": 3}
    return rank.get(state, 4), kid


async def rotate_keys(args: argparse.Namespace) -> int:
    settings = auth_settings()
    if not settings.jwt_keys_dir:
        raise CommandFailed(
            "this pod signs with GATEHOUSE_JWT_PRIVATE_KEY (one key): rotation needs the keys in"
            " a folder, GATEHOUSE_JWT_KEYS_DIR (the chart's auth.jwtKeys.existingSecret)"
        )
    folder = folder_keys(settings)
    delay = settings.jwt_propagation_delay

    def progress(left: float) -> None:
        print(
            f"step 2/3: waiting for every verifier to hold the key: {left:.0f} s left",
            file=sys.stderr,
        )

    async with etcd_client(settings) as client, rotation_copies(settings) as copies:
        rotation = rotation_of(client, settings, copies)
        try:
            plan = await rotation.publish_next(folder, args.kid)
            print(
                f"step 1/3: {plan.next_kid} is published, verify-only, since"
                f" {shown_time(plan.wait_began)}",
                file=sys.stderr,
            )
            try:
                await rotation.wait(plan, progress, every=max(1.0, min(30.0, delay / 10)))
            except asyncio.CancelledError:  # Ctrl-C cancels this command (services.cli.main)
                raise CommandFailed(interrupted_wait(plan)) from None
            switched = await rotation.switch(plan)
        finally:
            warn_of_copies_not_written(rotation)
    human = [
        f"step 3/3: {switched.signing} signs new tokens from now on",
        f"{switched.retiring} is retiring: its tokens keep working until they expire; the auth"
        f" replicas withdraw it at {shown_time(switched.retire_at)}"
        f" (GATEHOUSE_TOKEN_TTL={settings.token_ttl} s after the last replica stops signing"
        " with it, and a 15 s margin)",
    ]
    output.show(
        args,
        human,
        {
            "signing": switched.signing,
            "retiring": switched.retiring,
            "retire_at": rfc3339(switched.retire_at),
        },
    )
    return EXIT_OK


async def withdraw_key(args: argparse.Namespace) -> int:
    settings = auth_settings()
    async with etcd_client(settings) as client, rotation_copies(settings) as copies:
        rotation = rotation_of(client, settings, copies)
        try:
            withdrawn = await rotation.withdraw(args.kid, end_its_tokens=args.now)
        finally:
            warn_of_copies_not_written(rotation)
    records = ", ".join(withdrawn.records) or "none left"
    human = [
        f"{withdrawn.kid} is retired (it was {withdrawn.was}) and its records are deleted"
        f" ({records}): the tokens it signed are refused from now on",
        "remove its file from the key folder (the Secret), if it is there",
    ]
    output.show(
        args,
        human,
        {"kid": withdrawn.kid, "was": withdrawn.was, "deleted_records": withdrawn.records},
    )
    return EXIT_OK


def rotation_of(
    client: aetcd.Client, settings: AuthSettings, copies: RotationStateCopies
) -> Rotation:
    return Rotation(
        client,
        keys_prefix=settings.jwt_keys_prefix,
        rotation_prefix=settings.jwt_rotation_prefix,
        token_ttl=settings.token_ttl,
        propagation_delay=settings.jwt_propagation_delay,
        replica_poll_interval=settings.jwt_keys_poll_interval,
        records=key_records(settings),
        copies=copies,
    )


@asynccontextmanager
async def rotation_copies(settings: AuthSettings) -> AsyncIterator[RotationStateCopies]:
    """The replicas' copy of the rotation state on the MySQL primary, which every change these
    commands make is written to as well (the pool connects at the first write). A primary out
    of reach holds each command up for COPY_TIMEOUT at most, whatever GATEHOUSE_MYSQL_TIMEOUT."""
    primary = await Database.open(
        settings.mysql_primary_dsn,
        role="primary",
        pool_size=1,
        timeout=min(settings.mysql_timeout, COPY_TIMEOUT),
    )
    try:
        yield RotationStateCopies(primary)
    finally:
        await primary.close()


def warn_of_copies_not_written(rotation: Rotation) -> None:
    """The change is in etcd either way; without its copy, an etcd that loses its data before
    the replicas copy it would lose the change with it. Said however the command ends."""
    for reason in rotation.copy_not_written:
        print(
            f"warning: the change is in etcd, but its copy in MySQL was not written: {reason}",
            file=sys.stderr,
        )


def interrupted_wait(plan: Plan) -> str:
    """Ctrl-C during step 2 changes nothing more: say where the rotation stands."""
    return (
        f"interrupted in step 2/3: {plan.next_kid} stays published and verify-only, and"
        f" {plan.old_kid} still signs; run `gatehouse keys rotate` again to finish (its wait"
        f" counts from step 1, {shown_time(plan.wait_began)})"
    )


async def pepper_usage(args: argparse.Namespace) -> int:
    settings = auth_settings()
    async with replica_for(args, timeout=PEPPER_USAGE_TIMEOUT) as replica:
        reply = await replica.call(methods.ADMIN_PEPPER_USAGE, pb.AdminPepperUsageRequest())
    current = settings.current_pepper_version
    usage = {entry.version: entry.hashes for entry in reply.usage}
    versions = sorted({*usage, *settings.peppers})
    rows = [
        {
            "version": version,
            "hashes": usage.get(version, 0),
            "configured": version in settings.peppers,
            "current": version == current,
        }
        for version in versions
    ]
    human = output.table(
        ("VERSION", "HASHES", "CONFIGURED"),
        [
            (
                str(row["version"]),
                str(row["hashes"]),
                "yes, current" if row["current"] else ("yes" if row["configured"] else "NO"),
            )
            for row in rows
        ],
    )
    human += pepper_advice(rows, current)
    output.show(args, human, {"current": current, "versions": rows})
    return EXIT_OK


def pepper_advice(rows: Sequence[dict[str, Any]], current: int) -> list[str]:
    """What the operator should know about hashes under other versions than the current one."""
    advice = []
    for row in rows:
        if row["current"] or not row["hashes"]:
            continue
        if row["configured"]:
            advice.append(
                f"version {row['version']}: {row['hashes']} hash(es) move to {current} at their"
                " next login; keep this pepper until none is left (README, 'Rotating peppers')"
            )
        else:
            advice.append(
                f"version {row['version']} is not in GATEHOUSE_PEPPERS: its {row['hashes']}"
                " account(s) cannot log in; add the pepper back, or lock or delete them"
            )
    return advice
