"""Mutual TLS on the auth RPC (GATEHOUSE_RPC_TLS=mtls), against a stack of its own: who may
connect, who may call what, a replica the HTTP tier must not trust, and a certificate rotation
under load."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from devstack.certs import CertificateAuthority, IssuedCertificate
from devstack.gatehouse import Gatehouse, Service
from devstack.ports import wait_until_async
from devstack.rpc_tls import SERVER_NAME, RpcCertificates, issue_server
from devstack.stack import DataStores
from services.contract import auth_methods as methods
from services.contract import auth_pb2 as pb
from services.contract.method import Method
from services.foundation.discovery import ServiceRecord, registration
from services.foundation.rpc.client import CallFailed, ClientTls, RpcConnection
from services.foundation.rpc.protocol import PROTOCOL_MAX, PROTOCOL_MIN, RpcError
from services.foundation.rpc.routes import Route
from services.foundation.rpc.server import RpcServer, ServerLimits
from services.foundation.rpc.tls import TlsFiles, client_context, server_context
from tests.conftest import TEST_SETTINGS
from tests.gatehouse_cli import run_gatehouse
from tests.hostile_pictures import busy_picture, encoded
from tests.system.support import bearer, signed_up_token, stack_of_its_own

RELOAD_INTERVAL = "0.2"
PLAINTEXT_PROBE = (
    Path(__file__).parents[2] / "charts" / "gatehouse" / "files" / "rpc_plaintext_refused.py"
)
DEADLINE = 20.0


@pytest.fixture(scope="module")
def tls_stack(
    data_stores: DataStores, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gatehouse]:
    settings = {**TEST_SETTINGS, "GATEHOUSE_RPC_TLS_RELOAD_INTERVAL": RELOAD_INTERVAL}
    with stack_of_its_own(
        data_stores, tmp_path_factory.mktemp("rpc-mtls"), "rpc-mtls", settings, rpc_tls=True
    ) as stack:
        stack.start(1, 1)
        yield stack


@pytest.fixture
async def client(tls_stack: Gatehouse) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=tls_stack.url(), timeout=15.0, trust_env=False) as c:
        yield c


def certificates(stack: Gatehouse) -> RpcCertificates:
    assert stack.rpc_certificates is not None
    return stack.rpc_certificates


def tls_as(issued: IssuedCertificate) -> ClientTls:
    files = TlsFiles(issued.ca_path, issued.cert_path, issued.key_path)
    return ClientTls(client_context(files), SERVER_NAME)


async def connect(replica: Service, tls: ClientTls | None) -> RpcConnection:
    return await RpcConnection.open(
        "127.0.0.1", replica.ports["rpc"], connect_timeout=5.0, agent="mtls-test", tls=tls
    )


async def call(replica: Service, tls: ClientTls, method: Method[Any, Any], request: Any) -> Any:
    connection = await connect(replica, tls)
    try:
        return await connection.call(method.number, request.SerializeToString(), timeout=5.0)
    finally:
        connection.close()


async def test_the_http_tier_calls_the_auth_service_over_mutual_tls(
    client: httpx.AsyncClient,
) -> None:
    username, token = await signed_up_token(client)
    me = await client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 200, me.text
    assert me.json()["username"] == username


async def test_a_plaintext_client_is_refused_by_the_auth_port(tls_stack: Gatehouse) -> None:
    with pytest.raises(CallFailed) as refused:
        await connect(tls_stack.auth[0], None)
    assert refused.value.sent is False


def run_plaintext_probe(port: int) -> subprocess.CompletedProcess[str]:
    """The chart's `helm test` probe (charts/gatehouse/files/rpc_plaintext_refused.py)."""
    return subprocess.run(
        [sys.executable, str(PLAINTEXT_PROBE), "127.0.0.1", str(port)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_the_charts_plaintext_probe_passes_only_against_mutual_tls(
    tls_stack: Gatehouse, tmp_path: Path
) -> None:
    refused = await asyncio.to_thread(run_plaintext_probe, tls_stack.auth[0].ports["rpc"])
    plaintext = await rogue_replica(tmp_path, [], tls=False)
    port = await plaintext.start("127.0.0.1", 0)
    try:
        answered = await asyncio.to_thread(run_plaintext_probe, port)
    finally:
        await plaintext.close()

    assert refused.returncode == 0, refused.stderr
    assert "refused a plaintext client" in refused.stdout
    assert answered.returncode == 1
    assert "answered a plaintext Hello with a frame" in answered.stderr


async def test_a_client_certificate_from_another_ca_is_refused(
    tls_stack: Gatehouse, tmp_path: Path
) -> None:
    stranger = CertificateAuthority(tmp_path, name="Another CA").issue(
        "stranger", hosts=(), client=True, uris=("spiffe://gatehouse/http",)
    )
    # It trusts the real server (our CA), but the server does not trust it.
    ours = certificates(tls_stack).http.ca_path
    files = TlsFiles(ours, stranger.cert_path, stranger.key_path)
    with pytest.raises(CallFailed):
        connection = await RpcConnection.open(
            "127.0.0.1",
            tls_stack.auth[0].ports["rpc"],
            connect_timeout=5.0,
            agent="stranger",
            tls=ClientTls(client_context(files), SERVER_NAME),
        )
        # TLS 1.3 reports the server's refusal of a client certificate only on the first read.
        await connection.call(methods.PING.number, b"", timeout=5.0)


async def test_the_http_identity_may_not_call_admin_methods(
    tls_stack: Gatehouse, client: httpx.AsyncClient
) -> None:
    username, _ = await signed_up_token(client)
    http = tls_as(certificates(tls_stack).http)

    answer = await call(
        tls_stack.auth[0], http, methods.ADMIN_LOCK_USER, pb.AdminUserRequest(username=username)
    )

    assert answer.status == pb.STATUS_PERMISSION_DENIED, answer
    # Not executed: the account still logs in.
    login = await client.post(
        "/api/v1/sessions", json={"username": username, "password": "password1"}
    )
    assert login.status_code == 200, login.text


async def test_an_identity_named_by_a_dns_san_under_identity_invalid_is_authorized(
    tls_stack: Gatehouse, client: httpx.AsyncClient
) -> None:
    """As Helm issues it (genSignedCert writes no URI SAN): the operator's identity as the DNS
    SAN `operator.gatehouse.identity.invalid`, from the stack's own CA."""
    username, _ = await signed_up_token(client)
    authority = CertificateAuthority(
        certificates(tls_stack).server.cert_path.parent, name="Gatehouse devstack RPC CA"
    )
    operator = authority.issue(
        "rpc-operator-by-dns", hosts=("operator.gatehouse.identity.invalid",), client=True
    )

    answer = await call(
        tls_stack.auth[0],
        tls_as(operator),
        methods.ADMIN_SHOW_USER,
        pb.AdminUserRequest(username=username),
    )

    assert answer.status == pb.STATUS_OK, answer


async def test_an_operator_of_another_trust_domain_from_the_same_ca_is_refused(
    data_stores: DataStores, tmp_path: Path
) -> None:
    """Two deployments whose certificates one issuer signs (gh-prod in prod, gh-staging in
    staging): staging's operator certificate is no one on prod."""
    settings = {**TEST_SETTINGS, "GATEHOUSE_RPC_TRUST_DOMAIN": "gh-prod.prod"}
    with stack_of_its_own(data_stores, tmp_path, "trust-domain", settings, rpc_tls=True) as prod:
        replica = prod.start_auth()
        authority = CertificateAuthority(
            certificates(prod).server.cert_path.parent, name="Gatehouse devstack RPC CA"
        )
        staging = authority.issue(
            "rpc-staging-operator",
            hosts=(),
            client=True,
            uris=("spiffe://gh-staging.staging/operator",),
        )
        staging_by_dns = authority.issue(
            "rpc-staging-operator-dns",
            hosts=("operator.gh-staging.staging.identity.invalid",),
            client=True,
        )
        operator = authority.issue(
            "rpc-prod-operator", hosts=(), client=True, uris=("spiffe://gh-prod.prod/operator",)
        )
        request = pb.AdminUserRequest(username="nobody-here")

        for stranger in (staging, staging_by_dns, certificates(prod).operator):
            answer = await call(replica, tls_as(stranger), methods.ADMIN_SHOW_USER, request)
            assert answer.status == pb.STATUS_PERMISSION_DENIED, (stranger.cert_path, answer)
        answer = await call(replica, tls_as(operator), methods.ADMIN_SHOW_USER, request)
        assert answer.status == pb.STATUS_NOT_FOUND, answer


async def test_the_cli_works_with_the_operator_certificate(
    tls_stack: Gatehouse, client: httpx.AsyncClient
) -> None:
    username, _ = await signed_up_token(client)
    pod = tls_stack.auth[0]
    assert pod.process.env is not None

    shown = await asyncio.to_thread(run_gatehouse, "users", "show", username, env=pod.process.env)

    assert shown.exit_code == 0, shown.stderr
    assert username in shown.stdout


def session_of(token: str) -> pb.SessionRef:
    """The session a token names, as the HTTP tier sends it."""
    claims = jwt.decode(token, options={"verify_signature": False})
    return pb.SessionRef(user_id=int(claims["sub"]), session_id=claims["sid"])


def put_blob(key: str, session: pb.SessionRef | None = None) -> pb.PutBlobRequest:
    request = pb.PutBlobRequest(key=key, content_type="image/webp", data=webp_picture())
    if session is not None:
        request.session.CopyFrom(session)
    return request


def delete_blob(key: str, session: pb.SessionRef | None = None) -> pb.DeleteBlobRequest:
    request = pb.DeleteBlobRequest(key=key)
    if session is not None:
        request.session.CopyFrom(session)
    return request


def webp_picture() -> bytes:
    return encoded(busy_picture((64, 64)), "WEBP")


def answer_of(envelope: pb.Envelope) -> tuple[int, str]:
    return envelope.status, envelope.reason


async def stored(stack: Gatehouse, key: str) -> bool:
    http = tls_as(certificates(stack).http)
    answer = await call(stack.auth[0], http, methods.GET_BLOB, pb.GetBlobRequest(key=key))
    assert answer.status in (pb.STATUS_OK, pb.STATUS_NOT_FOUND), answer
    return bool(answer.status == pb.STATUS_OK)


async def test_only_the_owners_session_puts_or_deletes_a_blob(
    tls_stack: Gatehouse, client: httpx.AsyncClient
) -> None:
    """The HTTP identity is not enough: a blob's key names its owner, whose live session the
    call must carry."""
    owner = session_of((await signed_up_token(client))[1])
    other = session_of((await signed_up_token(client))[1])
    http = tls_as(certificates(tls_stack).http)
    replica = tls_stack.auth[0]
    key = f"{owner.user_id}/{'a' * 64}.webp"

    without = await call(replica, http, methods.PUT_BLOB, put_blob(key))
    anothers = await call(replica, http, methods.PUT_BLOB, put_blob(key, other))
    assert answer_of(without) == (pb.STATUS_UNAUTHENTICATED, "session_required")
    assert answer_of(anothers) == (pb.STATUS_PERMISSION_DENIED, "not_blob_owner")
    assert not await stored(tls_stack, key)

    owned = await call(replica, http, methods.PUT_BLOB, put_blob(key, owner))
    assert owned.status == pb.STATUS_OK, owned
    assert await stored(tls_stack, key)

    without = await call(replica, http, methods.DELETE_BLOB, delete_blob(key))
    anothers = await call(replica, http, methods.DELETE_BLOB, delete_blob(key, other))
    assert answer_of(without) == (pb.STATUS_UNAUTHENTICATED, "session_required")
    assert answer_of(anothers) == (pb.STATUS_PERMISSION_DENIED, "not_blob_owner")
    assert await stored(tls_stack, key)

    deleted = await call(replica, http, methods.DELETE_BLOB, delete_blob(key, owner))
    assert deleted.status == pb.STATUS_OK, deleted
    assert not await stored(tls_stack, key)


async def test_an_ended_session_puts_and_deletes_no_blob(
    tls_stack: Gatehouse, client: httpx.AsyncClient
) -> None:
    _, token = await signed_up_token(client)
    owner = session_of(token)
    http = tls_as(certificates(tls_stack).http)
    replica = tls_stack.auth[0]
    kept = f"{owner.user_id}/{'b' * 64}.webp"
    assert (await call(replica, http, methods.PUT_BLOB, put_blob(kept, owner))).status == (
        pb.STATUS_OK
    )
    logout = await client.delete("/api/v1/sessions/current", headers=bearer(token))
    assert logout.status_code == 204, logout.text

    key = f"{owner.user_id}/{'c' * 64}.webp"
    put = await call(replica, http, methods.PUT_BLOB, put_blob(key, owner))
    delete = await call(replica, http, methods.DELETE_BLOB, delete_blob(kept, owner))

    assert answer_of(put) == (pb.STATUS_UNAUTHENTICATED, "unauthenticated")
    assert answer_of(delete) == (pb.STATUS_UNAUTHENTICATED, "unauthenticated")
    assert not await stored(tls_stack, key)
    assert await stored(tls_stack, kept)


async def test_the_operator_deletes_a_blob_without_a_session_but_puts_none(
    tls_stack: Gatehouse, client: httpx.AsyncClient
) -> None:
    owner = session_of((await signed_up_token(client))[1])
    http = tls_as(certificates(tls_stack).http)
    operator = tls_as(certificates(tls_stack).operator)
    replica = tls_stack.auth[0]
    key = f"{owner.user_id}/{'d' * 64}.webp"
    assert (await call(replica, http, methods.PUT_BLOB, put_blob(key, owner))).status == (
        pb.STATUS_OK
    )

    put = await call(replica, operator, methods.PUT_BLOB, put_blob(key))
    by_http = await call(replica, http, methods.DELETE_BLOB, delete_blob(key))
    assert put.status == pb.STATUS_PERMISSION_DENIED, put
    assert answer_of(by_http) == (pb.STATUS_UNAUTHENTICATED, "session_required")
    assert await stored(tls_stack, key)

    deleted = await call(replica, operator, methods.DELETE_BLOB, delete_blob(key))

    assert deleted.status == pb.STATUS_OK, deleted
    assert not await stored(tls_stack, key)


async def test_a_replica_with_a_certificate_from_another_ca_gets_no_calls(
    tls_stack: Gatehouse, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    _, token = await signed_up_token(client)
    reached: list[str] = []
    rogue = await rogue_replica(tmp_path, reached)
    port = await rogue.start("127.0.0.1", 0)
    env = tls_stack.base_env(Path.cwd())
    record = ServiceRecord(
        instance_id="rogue",
        host="127.0.0.1",
        port=port,
        protocol_min=PROTOCOL_MIN,
        protocol_max=PROTOCOL_MAX,
        release="rogue",
        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    # Planted as whoever may write discovery records (the auth replicas' etcd user): the
    # certificate is what keeps it out.
    announcement = registration(
        tls_stack.tier_access("auth"), env["GATEHOUSE_DISCOVERY_PREFIX"], record, 5
    )
    await announcement.start()
    try:
        statuses = [
            (
                await client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
            ).status_code
            for _ in range(40)
        ]
    finally:
        await announcement.stop()
        await rogue.close()
    assert reached == []
    assert statuses == [200] * len(statuses)


async def rogue_replica(folder: Path, reached: list[str], *, tls: bool = True) -> RpcServer:
    """An RPC server that would serve every method, with a certificate for the right name
    from another CA (or in plaintext); it records every call that reaches it."""
    rogue_ca = CertificateAuthority(folder, name="Rogue CA")
    issued = issue_server(rogue_ca)

    def handler(name: str) -> Any:
        async def handle(request: Any, deadline: float) -> Any:
            reached.append(name)
            raise RpcError(pb.STATUS_INTERNAL, "rogue")

        return handle

    context = server_context(TlsFiles(issued.ca_path, issued.cert_path, issued.key_path))
    context.verify_mode = ssl.CERT_NONE  # it wants calls from anyone
    return RpcServer(
        [Route(method, handler(method.name)) for method in methods.METHODS],
        ServerLimits(
            max_connections=100,
            max_frame_bytes=1 << 20,
            handshake_timeout=5.0,
            idle_timeout=60.0,
            max_connections_per_peer=100,
            max_calls_per_connection=100,
            write_high_water_bytes=1 << 20,
            write_stall_timeout=5.0,
            max_write_buffer_bytes=1 << 22,
        ),
        "rogue",
        tls=context if tls else None,
    )


async def test_a_certificate_rotation_under_load_fails_no_call(
    tls_stack: Gatehouse, client: httpx.AsyncClient
) -> None:
    _, token = await signed_up_token(client)
    auth = tls_stack.auth[0]
    operator = tls_as(certificates(tls_stack).operator)
    before = await served_certificate(auth, operator)
    statuses: list[int] = []
    rotated = asyncio.Event()

    async def load() -> None:
        loop = asyncio.get_running_loop()
        stop_at = loop.time() + DEADLINE
        # Bounded: until the rotation was seen plus 50 more calls, or the deadline.
        after_rotation = 0
        while loop.time() < stop_at and after_rotation < 50:
            answer = await client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
            statuses.append(answer.status_code)
            if rotated.is_set():
                after_rotation += 1

    workers = [asyncio.create_task(load()) for _ in range(4)]
    # Both ends' certificates are reissued in place, as cert-manager renews a Secret.
    reissued = RpcCertificates.issue(certificates(tls_stack).server.cert_path.parent)

    async def serves_the_new_certificate() -> bool:
        return await served_certificate(auth, tls_as(reissued.operator)) != before

    await wait_until_async(
        serves_the_new_certificate, DEADLINE, "the auth replica to serve its new certificate"
    )
    rotated.set()
    await asyncio.gather(*workers)

    assert statuses and statuses == [200] * len(statuses)


async def served_certificate(replica: Service, tls: ClientTls) -> bytes:
    """The certificate a new TLS connection to `replica` is shown (DER)."""
    connection = await connect(replica, tls)
    try:
        transport = connection.transport
        assert transport is not None
        ssl_object = transport.get_extra_info("ssl_object")
        assert isinstance(ssl_object, ssl.SSLObject)
        der = ssl_object.getpeercert(binary_form=True)
        assert der is not None
        return der
    finally:
        connection.close()
