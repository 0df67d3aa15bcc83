"""The auth replica the `gatehouse` command calls: one RPC connection (the foundation client)
for the command's few calls, and every failure turned into a one-line CommandFailed (exit 1)
that says what to check."""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from google.protobuf.message import DecodeError

from services.cli.errors import EXIT_USAGE, CommandFailed
from services.cli.settings import CliSettings, load_cli_settings
from services.contract import auth_methods as methods
from services.contract import auth_pb2 as pb
from services.contract.method import Method, ReplyT, RequestT
from services.foundation.rpc.client import CallFailed, ClientTls, RpcConnection
from services.foundation.rpc.protocol import STATUS_NAMES

AGENT = "gatehouse-cli"
# The calls that change nothing: Ctrl-C while one waits is a plain interruption. Any other
# call interrupted while it waits may have been applied (the replica may have run it already).
_READS = frozenset(
    method.number
    for method in (methods.ADMIN_SHOW_USER, methods.ADMIN_LIST_SESSIONS, methods.ADMIN_PEPPER_USAGE)
)


class Replica:
    def __init__(self, connection: RpcConnection, address: str, timeout: float) -> None:
        self._connection = connection
        self._address = address
        self._timeout = timeout

    def with_timeout(self, timeout: float) -> Replica:
        """The same connection, its calls waiting `timeout` seconds for an answer."""
        return Replica(self._connection, self._address, timeout)

    async def call(self, method: Method[RequestT, ReplyT], request: RequestT) -> ReplyT:
        """The reply, or CommandFailed saying what went wrong (NotFound, with the answer's
        reason, for a NOT_FOUND answer)."""
        if self._connection.protocol_version < method.since_protocol:
            raise CommandFailed(
                f"the auth replica at {self._address} speaks protocol "
                f"{self._connection.protocol_version}; `{method.name}` needs protocol "
                f"{method.since_protocol}: upgrade the auth service first"
            )
        try:
            envelope = await self._connection.call(
                method.number, request.SerializeToString(), timeout=self._timeout
            )
        except asyncio.CancelledError:  # Ctrl-C cancels this command (services.cli.main)
            if method.number in _READS:
                raise
            raise CommandFailed(
                f"interrupted while waiting for the answer to {method.name} from the auth "
                f"replica at {self._address}: it may have been applied: check (`gatehouse users "
                "show NAME`, `gatehouse sessions list NAME`) before repeating it"
            ) from None
        except CallFailed as exc:
            maybe = " (it may have been applied: check before repeating it)" if exc.sent else ""
            raise CommandFailed(
                f"the call {method.name} to the auth replica at {self._address} got no answer: "
                f"{exc.message}{maybe}"
            ) from None
        if envelope.status != pb.STATUS_OK:
            raise answer_failure(method, envelope, self._address)
        try:
            return method.reply_type.FromString(envelope.payload)
        except DecodeError as exc:
            raise CommandFailed(
                f"the auth replica at {self._address} sent an undecodable answer to "
                f"{method.name}: {exc}"
            ) from None


async def account_call(
    replica: Replica, method: Method[RequestT, ReplyT], request: RequestT, username: str
) -> ReplyT:
    """An operator call naming an account; CommandFailed when no live account has the name."""
    try:
        return await replica.call(method, request)
    except NotFound as exc:
        if exc.reason == "user_not_found":
            raise CommandFailed(f"no live account is named {username!r}") from None
        raise


async def user_call(
    replica: Replica, method: Method[pb.AdminUserRequest, ReplyT], username: str
) -> ReplyT:
    """An operator call taking just the username (AdminUserRequest)."""
    return await account_call(replica, method, pb.AdminUserRequest(username=username), username)


class NotFound(CommandFailed):
    """The replica answered NOT_FOUND: `reason` says what was not found."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def answer_failure(
    method: Method[RequestT, ReplyT], envelope: pb.Envelope, address: str
) -> CommandFailed:
    status = STATUS_NAMES.get(envelope.status, str(envelope.status))
    detail = envelope.message or "no detail"
    if envelope.status == pb.STATUS_NOT_FOUND:
        return NotFound(detail, envelope.reason)
    if envelope.status == pb.STATUS_PERMISSION_DENIED:
        return CommandFailed(
            f"the auth replica at {address} refused {method.name} to this caller ({detail}): "
            "with GATEHOUSE_RPC_TLS=mtls the command needs the operator certificate "
            "(GATEHOUSE_CLI_TLS_CERT); in plaintext it calls the replica's "
            "GATEHOUSE_OPERATOR_SOCKET, in the auth pod"
        )
    if envelope.status == pb.STATUS_UNIMPLEMENTED:
        return CommandFailed(
            f"the auth replica at {address} does not implement {method.name} ({detail}): "
            "is it an older release?"
        )
    if envelope.status in (pb.STATUS_UNAVAILABLE, pb.STATUS_DRAINING, pb.STATUS_OVERLOADED):
        return CommandFailed(
            f"the auth replica at {address} could not serve {method.name} ({status}: {detail}); "
            "retry shortly"
        )
    return CommandFailed(f"{method.name} failed ({status}): {detail}")


@asynccontextmanager
async def replica_for(
    args: argparse.Namespace, *, timeout: float | None = None
) -> AsyncIterator[Replica]:
    """The replica the command line names (--auth-address), else the settings' one; each call
    waits `timeout` seconds for its answer (GATEHOUSE_CLI_TIMEOUT when None)."""
    settings = load_cli_settings(CliSettings)
    try:
        host, port = settings.replica_address(args.auth_address)
    except ValueError as exc:
        raise CommandFailed(f"--auth-address: {exc}", EXIT_USAGE) from None
    unix_path = settings.operator_socket_to_call(args.auth_address)
    async with connected(
        host, port, settings.call_timeout, settings.operator_tls(), unix_path=unix_path
    ) as replica:
        yield replica.with_timeout(timeout) if timeout is not None else replica


@asynccontextmanager
async def connected(
    host: str,
    port: int,
    timeout: float,
    tls: ClientTls | None = None,
    *,
    unix_path: str | None = None,
) -> AsyncIterator[Replica]:
    """A connection to the replica at host:port (its operator socket `unix_path` when given),
    or CommandFailed saying what to check."""
    address = unix_path or (f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    if unix_path:
        _require_own_socket(unix_path)
    try:
        connection = await RpcConnection.open(
            host, port, connect_timeout=timeout, agent=AGENT, tls=tls, unix_path=unix_path
        )
    except CallFailed as exc:
        # In plaintext a replica takes operator calls on its own socket only (over TCP they are
        # refused): another replica is reached by running the command in its pod.
        listens, elsewhere = (
            (
                "takes operator calls on GATEHOUSE_OPERATOR_SOCKET",
                "or run the command in another auth pod",
            )
            if unix_path
            else (
                "listens on GATEHOUSE_AUTH_PORT",
                "or name a replica with --auth-address HOST:PORT",
            )
        )
        raise CommandFailed(
            f"cannot reach the auth replica at {address} ({exc.message}); check that the auth "
            f"service runs in this pod (kubectl exec deploy/<release>-auth -- gatehouse ...) and "
            f"{listens}, {elsewhere}"
        ) from None
    try:
        yield Replica(connection, address, timeout)
    finally:
        connection.close()


def _require_own_socket(path: str) -> None:
    """The replica runs as this user (the command runs in its pod, as the pod's user): a
    socket of another user's at the path is not the replica's, and gets no operator call."""
    try:
        owner = os.stat(path).st_uid
    except OSError as exc:
        raise CommandFailed(
            f"no operator socket at {path} ({exc.strerror}); check that the auth service runs in"
            " this pod with the same GATEHOUSE_OPERATOR_SOCKET"
        ) from None
    if owner != os.geteuid():
        raise CommandFailed(
            f"the socket at {path} belongs to uid {owner}, not to this user (uid {os.geteuid()}),"
            " so it is not the auth replica's; run the command as the replica's user"
        )
