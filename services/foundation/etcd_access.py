"""How a process reaches etcd: endpoints, and optionally a user (etcd auth) and TLS.

aetcd's client speaks plaintext gRPC only and authenticates once per connection; `EtcdClient`
adds TLS (a CA, optionally a client certificate) and reads the password when it is made, so a
rotated password file is picked up by the next connection without a restart. An expired auth
token fails the call that used it; every owner of a client (etcd.py, snowflake.py, the signing
key ring) then drops the client and connects again, which authenticates again.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aetcd
import grpc

# A password file holds one line; anything larger is a mistake (a key or a certificate).
MAX_PASSWORD_FILE_BYTES = 4096


@dataclass(frozen=True)
class EtcdAccess:
    """Endpoints plus the identity and TLS files to use on each of them ("" = not used)."""

    endpoints: tuple[str, ...]
    username: str = ""
    password: str = ""
    password_file: str = ""
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""

    def __repr__(self) -> str:  # never show the password
        return (
            f"EtcdAccess(endpoints={self.endpoints!r}, username={self.username!r}, "
            f"tls={bool(self.ca_file)}, client_cert={bool(self.cert_file)})"
        )

    def current_password(self) -> str:
        if self.password_file:
            return read_password_file(self.password_file)
        return self.password

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        if not self.ca_file:
            return None
        certificate = Path(self.cert_file).read_bytes() if self.cert_file else None
        key = Path(self.key_file).read_bytes() if self.key_file else None
        return grpc.ssl_channel_credentials(Path(self.ca_file).read_bytes(), key, certificate)


# A bare endpoint tuple: plaintext, no user (a local etcd, the tests' own).
EtcdTarget = EtcdAccess | tuple[str, ...]


def as_access(target: EtcdTarget) -> EtcdAccess:
    return target if isinstance(target, EtcdAccess) else EtcdAccess(endpoints=target)


def read_password_file(path: str) -> str:
    with open(path, "rb") as file:
        raw = file.read(MAX_PASSWORD_FILE_BYTES + 1)
    if len(raw) > MAX_PASSWORD_FILE_BYTES:
        raise ValueError(f"{path} is larger than {MAX_PASSWORD_FILE_BYTES} bytes")
    return raw.decode().strip()


def access_problems(access: EtcdAccess) -> list[str]:
    """One sentence per inconsistent etcd access setting (never quoting the password)."""
    problems = []
    if (access.password or access.password_file) and not access.username:
        problems.append("GATEHOUSE_ETCD_PASSWORD(_FILE) needs GATEHOUSE_ETCD_USERNAME")
    if access.password and access.password_file:
        problems.append("set GATEHOUSE_ETCD_PASSWORD or GATEHOUSE_ETCD_PASSWORD_FILE, not both")
    if access.username and not (access.password or access.password_file):
        problems.append("GATEHOUSE_ETCD_USERNAME needs GATEHOUSE_ETCD_PASSWORD(_FILE)")
    if bool(access.cert_file) != bool(access.key_file):
        problems.append("set both GATEHOUSE_ETCD_CERT_FILE and GATEHOUSE_ETCD_KEY_FILE, or neither")
    if access.cert_file and not access.ca_file:
        problems.append("a client certificate for etcd needs GATEHOUSE_ETCD_CA_FILE (TLS)")
    for env, path in (
        ("GATEHOUSE_ETCD_PASSWORD_FILE", access.password_file),
        ("GATEHOUSE_ETCD_CA_FILE", access.ca_file),
        ("GATEHOUSE_ETCD_CERT_FILE", access.cert_file),
        ("GATEHOUSE_ETCD_KEY_FILE", access.key_file),
    ):
        if path and not Path(path).is_file():
            problems.append(f"{env}={path!r} is not a readable file")
    return problems


class EtcdClient(aetcd.Client):  # type: ignore[misc]
    """aetcd's client over TLS when `access` names a CA, authenticated when it names a user.

    etcd's simple auth tokens expire after `--auth-token-ttl` seconds unused: a call refused
    for an invalid token authenticates again and is retried once (`_TokenRefresh`), so an idle
    long-lived client keeps working. Watch streams and lease keep-alives, once open, are not
    checked against the token by etcd 3.4."""

    _is_connecting: bool
    metadata: tuple[tuple[str, str], ...] | None

    def __init__(self, access: EtcdAccess, host: str, port: int, **kwargs: Any) -> None:
        password = access.current_password() if access.username else None
        super().__init__(
            host=host,
            port=port,
            username=access.username or None,
            password=password,
            **kwargs,
        )
        self._credentials = access.channel_credentials()

    async def connect(self) -> None:
        """aetcd's connect, with TLS when configured and a token refresh on every channel."""
        if self._connected.is_set():
            return
        if self._is_connecting:
            await asyncio.wait_for(self._connected.wait(), self._connect_wait_timeout)
            return
        self._is_connecting = True
        try:
            target = f"{self._host}:{self._port}"
            options = list(self._options.items())
            interceptors = [_TokenRefresh(self)]
            if self._credentials is None:
                self.channel = grpc.aio.insecure_channel(
                    target, options=options, interceptors=interceptors
                )
            else:
                self.channel = grpc.aio.secure_channel(
                    target, self._credentials, options=options, interceptors=interceptors
                )
            self.auth_stub = aetcd.rpc.AuthStub(self.channel)
            if self._username is not None and self._password is not None:
                await self.authenticate()
            self.kvstub = aetcd.rpc.KVStub(self.channel)
            self.clusterstub = aetcd.rpc.ClusterStub(self.channel)
            self.leasestub = aetcd.rpc.LeaseStub(self.channel)
            self.maintenancestub = aetcd.rpc.MaintenanceStub(self.channel)
            self._watcher = aetcd.watcher.Watcher(
                aetcd.rpc.WatchStub(self.channel),
                timeout=self._timeout,
                metadata=watch_metadata(self.metadata),
            )
            self._connected.set()
        finally:
            self._is_connecting = False

    async def authenticate(self) -> str:
        """A fresh token for this client's user, used by its calls from now on."""
        request = aetcd.rpc.AuthenticateRequest(name=self._username, password=self._password)
        try:
            reply = await self.auth_stub.Authenticate(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            aetcd.exceptions._handle_exception(exc)
        token: str = reply.token
        metadata: tuple[tuple[str, str], ...] = (("token", token),)
        self.metadata = metadata
        if self._watcher is not None:
            self._watcher._metadata = watch_metadata(metadata)  # for the streams it opens later
        return token


_AUTHENTICATE = "/etcdserverpb.Auth/Authenticate"
# etcd's "require leader" (clientv3.WithRequireLeader): a member that loses its leader, cut off
# from its peers' quorum, ends such a watch stream (after about three election timeouts) rather
# than keep it open and silent, and refuses to open one; the watcher then tries another member.
# Without it a partitioned member's watch answers keepalives and delivers nothing, for ever.
_REQUIRE_LEADER = ("hasleader", "true")


def watch_metadata(
    metadata: tuple[tuple[str, str], ...] | None,
) -> tuple[tuple[str, str], ...]:
    """The metadata of every watch stream: the client's (its auth token) and require-leader."""
    return (*(metadata or ()), _REQUIRE_LEADER)


class _TokenRefresh(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Retries once, with a new token, a call that etcd refused for an expired token."""

    def __init__(self, client: EtcdClient) -> None:
        self._client = client

    async def intercept_unary_unary(
        self, continuation: Any, details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        call = await continuation(details, request)
        try:
            return await call
        except grpc.aio.AioRpcError as exc:
            if not _expired_token(exc) or _method(details) == _AUTHENTICATE:
                raise
        token = await self._client.authenticate()
        kept = [(key, value) for key, value in (details.metadata or ()) if key != "token"]
        metadata = grpc.aio.Metadata(*kept, ("token", token))
        retried = await continuation(details._replace(metadata=metadata), request)
        return await retried


def _expired_token(exc: grpc.aio.AioRpcError) -> bool:
    return exc.code() == grpc.StatusCode.UNAUTHENTICATED and "invalid auth token" in (
        exc.details() or ""
    )


def _method(details: grpc.aio.ClientCallDetails) -> str:
    method = details.method
    return method.decode() if isinstance(method, bytes) else str(method)
