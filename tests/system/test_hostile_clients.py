"""Slow, idle and malformed clients against real HTTP processes (Granian, and Hypercorn where
the behaviour is the server's): they get 4xx answers or closed connections, and the requests
of everyone else keep being served."""

from __future__ import annotations

import asyncio
import io
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from devstack import DataStores
from devstack.gatehouse import Gatehouse, Service
from devstack.ports import wait_until_async
from services.http.middleware.unread_body import DRAIN_SECONDS
from tests.conftest import TEST_SETTINGS
from tests.system.raw_http import RawConnection, request_head

JSON = {"Content-Type": "application/json"}
# Short timeouts keep the tests fast; the defaults (10 s) behave the same, only slower.
SHORT_TIMEOUTS = {
    "GATEHOUSE_BODY_TIMEOUT": "1",
    "GATEHOUSE_UPLOAD_GRACE": "1",
    "GATEHOUSE_UPLOAD_MIN_RATE": "100000",
    "GATEHOUSE_HEADER_TIMEOUT": "1",
    "GATEHOUSE_KEEP_ALIVE_TIMEOUT": "1",
    "GATEHOUSE_STALLED_SEND_TIMEOUT": "1",
}
# Requests running on one worker at most this many, so a few slow clients could fill it.
IN_FLIGHT = 4
# Picture uploads one worker holds at once, in the fixture that lets bodies take long.
UPLOADS = 2


@pytest.fixture(scope="module")
def stack(data_stores: DataStores, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gatehouse]:
    run = uuid.uuid4().hex[:8]
    settings = {
        **TEST_SETTINGS,
        "GATEHOUSE_HTTP_WORKERS": "1",
        "GATEHOUSE_ADMISSION_CONCURRENCY": str(IN_FLIGHT),
        "GATEHOUSE_DISCOVERY_PREFIX": f"/gatehouse-hostile-{run}/auth/",
        "GATEHOUSE_JWT_KEYS_PREFIX": f"/gatehouse-hostile-{run}/jwt-keys/",
    }
    system = Gatehouse(data_stores, Path(tmp_path_factory.mktemp("hostile")), settings=settings)
    try:
        system.start_auth()
        yield system
    finally:
        system.stop()


@pytest.fixture(scope="module")
def short_timeouts(stack: Gatehouse) -> Service:
    """Granian with 1 s body, header and keep-alive timeouts."""
    return stack.start_http(SHORT_TIMEOUTS)


@pytest.fixture(scope="module")
def long_body_timeout(stack: Gatehouse) -> Service:
    """Granian whose bodies may take 60 s: slow clients stay slow for the whole test; it holds
    at most UPLOADS uploads at once."""
    return stack.start_http(
        {
            "GATEHOUSE_BODY_TIMEOUT": "60",
            "GATEHOUSE_UPLOAD_GRACE": "60",
            "GATEHOUSE_MAX_UPLOADS_IN_FLIGHT": str(UPLOADS),
        }
    )


@pytest.fixture(scope="module")
def hypercorn_capped(stack: Gatehouse) -> Service:
    """Hypercorn with short timeouts and room for 3 connections per worker."""
    return stack.start_http(
        {
            **SHORT_TIMEOUTS,
            "GATEHOUSE_HTTP_SERVER": "hypercorn",
            "GATEHOUSE_HTTP_MAX_CONNECTIONS": "3",
        }
    )


def url(service: Service) -> str:
    return f"http://127.0.0.1:{service.ports['http']}"


@pytest.fixture
async def client(short_timeouts: Service) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=url(short_timeouts), timeout=10.0, trust_env=False) as c:
        yield c


async def signed_up_token(base_url: str) -> str:
    username = f"host{uuid.uuid4().hex[:10]}"
    async with httpx.AsyncClient(base_url=base_url, timeout=10.0, trust_env=False) as client:
        created = await client.post(
            "/api/v1/users", json={"username": username, "password": "password1"}
        )
        assert created.status_code == 201, created.text
        login = await client.post(
            "/api/v1/sessions", json={"username": username, "password": "password1"}
        )
        assert login.status_code == 200, login.text
        return str(login.json()["token"])


async def still_ready(service: Service) -> None:
    async with httpx.AsyncClient(timeout=5.0, trust_env=False) as client:
        ready = await client.get(f"{url(service)}/readyz")
        assert ready.status_code == 200, ready.text


# Slow bodies


async def test_a_json_body_past_its_deadline_gets_408_and_the_connection_closes(
    short_timeouts: Service,
) -> None:
    connection = await RawConnection.open(short_timeouts.ports["http"])
    headers = {**JSON, "Content-Length": "100"}
    await connection.send(request_head("POST", "/api/v1/sessions", headers) + b'{"user')
    started = time.monotonic()
    answer = await connection.answer(timeout=5.0)
    assert answer.error() == (408, "request_timeout")
    assert 0.8 < time.monotonic() - started < 4.0
    assert answer.headers.get("connection") == "close"
    assert await connection.closed_by_server(timeout=5.0)
    await still_ready(short_timeouts)


async def test_a_body_in_one_byte_chunks_gets_400_and_the_connection_closes(
    long_body_timeout: Service,
) -> None:
    """Each chunk cost the worker about 70 us: 60,000 of one byte held it 4 s (any path: an
    unknown one's body is drained). Past 1,024 pieces of under 256 bytes on average, the body
    is refused and the connection closed. On the process with the 60 s body timeout: beside a
    busy test worker, 1 s was once not enough to read the 2,000 pieces, and the answer was 408."""
    connection = await RawConnection.open(long_body_timeout.ports["http"])
    try:
        headers = {**JSON, "Transfer-Encoding": "chunked"}
        await connection.send(request_head("POST", "/api/v1/sessions", headers))
        await connection.send(b"1\r\n \r\n" * 2000)  # 14 KB: a few segments, 2,000 chunks
        answer = await connection.answer(timeout=5.0)
        assert answer.error() == (400, "invalid_request")
        assert "pieces" in answer.json()["error"]["message"]
        assert answer.headers.get("connection") == "close"
        assert await connection.closed_by_server(timeout=5.0)
    finally:
        connection.close()
    await still_ready(long_body_timeout)


async def test_an_upload_slower_than_the_minimum_rate_gets_408(short_timeouts: Service) -> None:
    token = await signed_up_token(url(short_timeouts))
    connection = await RawConnection.open(short_timeouts.ports["http"])
    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": "image/png",
        "Content-Length": str(1_000_000),
    }
    await connection.send(request_head("PUT", "/api/v1/me/avatar", headers) + b"\x89PNG" * 1000)
    answer = await connection.answer(timeout=5.0)
    assert answer.error() == (408, "request_timeout")
    assert await connection.closed_by_server(timeout=5.0)


async def test_slow_bodies_do_not_take_the_slots_of_complete_requests(
    long_body_timeout: Service,
) -> None:
    base_url = url(long_body_timeout)
    token = await signed_up_token(base_url)
    slow = []
    for index in range(3 * IN_FLIGHT):
        path = "/api/v1/sessions" if index % 2 else "/api/v1/me"
        method = "POST" if index % 2 else "PATCH"
        connection = await RawConnection.open(long_body_timeout.ports["http"])
        headers = {**JSON, "Content-Length": "1000", "Authorization": f"Bearer {token}"}
        await connection.send(request_head(method, path, headers) + b"{")
        slow.append(connection)
    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=10.0, trust_env=False) as client:
            for round_number in range(2 * IN_FLIGHT):
                me = await client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
                assert me.status_code == 200, me.text
                changed = await client.patch(
                    "/api/v1/me",
                    json={"nickname": "Bystander"},
                    headers={"Authorization": f"Bearer {token}"},
                )
                assert changed.status_code == 200, changed.text
                # A new name each round: more failures of one name would meet the login
                # throttle (GATEHOUSE_LOGIN_FAILURE_LIMIT) before the slots are proven.
                unknown = {"username": f"nobody-here-{round_number}", "password": "password1"}
                login = await client.post("/api/v1/sessions", json=unknown)
                assert login.status_code == 401, login.text
    finally:
        for connection in slow:
            connection.close()


async def test_logout_without_a_session_answers_without_reading_the_body(
    long_body_timeout: Service,
) -> None:
    connection = await RawConnection.open(long_body_timeout.ports["http"])
    headers = {
        "Cookie": "csrf=" + "a" * 32,
        "Content-Type": "application/x-www-form-urlencoded",
        "Content-Length": "1000",
    }
    await connection.send(request_head("POST", "/logout", headers))  # and no body, ever
    answer = await connection.answer(timeout=5.0)
    assert (answer.status, answer.headers["location"]) == (303, "/login")
    connection.close()


def upload_head(token: str, length: int = 5_000_000) -> bytes:
    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": "image/png",
        "Content-Length": str(length),
    }
    return request_head("PUT", "/api/v1/me/avatar", headers)


async def test_an_upload_with_a_logged_out_token_is_refused_before_its_body(
    long_body_timeout: Service,
) -> None:
    """Its signature is valid, but its session has ended: no 5 MB of it are buffered."""
    base_url = url(long_body_timeout)
    token = await signed_up_token(base_url)
    async with httpx.AsyncClient(base_url=base_url, timeout=10.0, trust_env=False) as client:
        ended = await client.delete(
            "/api/v1/sessions/current", headers={"Authorization": f"Bearer {token}"}
        )
        assert ended.status_code == 204, ended.text
    connection = await RawConnection.open(long_body_timeout.ports["http"])
    await connection.send(upload_head(token) + b"\x89PNG")  # and nothing more
    # Without reading the body, the handler answers at once; the unread-body drain holds the
    # answer for DRAIN_SECONDS, dropping what arrives. Reading it would wait the 60 s allowed.
    answer = await connection.answer(timeout=DRAIN_SECONDS + 5.0)
    assert answer.error() == (401, "unauthenticated")
    connection.close()


SMALL_UPLOAD_BYTES = 64 * 1024


@pytest.fixture(scope="module")
def small_uploads(stack: Gatehouse) -> Service:
    """Granian with one worker, uploads of at most 64 KiB, UPLOADS of them buffered at once
    (128 KiB), and bodies that may take 60 s."""
    return stack.start_http(
        {
            "GATEHOUSE_HTTP_WORKERS": "1",
            "GATEHOUSE_BODY_TIMEOUT": "60",
            "GATEHOUSE_UPLOAD_GRACE": "60",
            "GATEHOUSE_MAX_UPLOADS_IN_FLIGHT": str(UPLOADS),
            "GATEHOUSE_MAX_AVATAR_BYTES": str(SMALL_UPLOAD_BYTES),
        }
    )


def small_png() -> bytes:
    output = io.BytesIO()
    Image.linear_gradient("L").resize((300, 300)).convert("RGB").save(output, format="PNG")
    return output.getvalue()


async def test_uploads_whose_bodies_never_come_do_not_shut_others_out(
    small_uploads: Service,
) -> None:
    """Counted from their headers, uploads that never sent a byte (8 accounts on 8 addresses)
    held every place, and 51 of 52 other people's uploads got 503."""
    base_url, port = url(small_uploads), small_uploads.ports["http"]
    held = []
    try:
        for number in range(2, 2 + 3 * UPLOADS):
            token = await signed_up_token(base_url)
            connection = await RawConnection.open(port, source=f"127.0.3.{number}")
            await connection.send(upload_head(token, SMALL_UPLOAD_BYTES))  # and no body
            held.append(connection)
        await still_ready(small_uploads)
        picture = small_png()
        token = await signed_up_token(base_url)
        async with httpx.AsyncClient(base_url=base_url, timeout=10.0, trust_env=False) as client:
            uploaded = await client.put(
                "/api/v1/me/avatar",
                content=picture,
                headers={"Authorization": f"Bearer {token}", "Content-Type": "image/png"},
            )
        assert uploaded.status_code == 200, uploaded.text
    finally:
        for connection in held:
            connection.close()


async def test_uploads_past_the_per_worker_bytes_get_503(small_uploads: Service) -> None:
    """The bodies buffered at once are bounded in bytes: UPLOADS x GATEHOUSE_MAX_AVATAR_BYTES."""
    base_url, port = url(small_uploads), small_uploads.ports["http"]
    held = []
    try:
        for number in range(UPLOADS):  # each past its session check, most of its body sent
            token = await signed_up_token(base_url)
            connection = await RawConnection.open(port, source=f"127.0.4.{number + 2}")
            body = b"\x89PNG\r\n\x1a\n" + bytes(SMALL_UPLOAD_BYTES - 2048 - 8)
            await connection.send(upload_head(token, SMALL_UPLOAD_BYTES) + body)
            held.append(connection)
        await still_ready(small_uploads)  # a round trip: the held bytes have arrived
        token = await signed_up_token(base_url)
        refused = await RawConnection.open(port, source="127.0.4.100")
        await refused.send(upload_head(token, 8192) + b"\x89PNG\r\n\x1a\n" + bytes(8184))
        answer = await refused.answer(timeout=5.0)
        assert answer.error() == (503, "overloaded")
        assert answer.headers.get("retry-after") == "1"
        assert "as many pictures as it can" in answer.json()["error"]["message"]
        refused.close()
        await still_ready(small_uploads)
    finally:
        for connection in held:
            connection.close()


# Idle connections


@pytest.mark.parametrize("server", ["granian", "hypercorn"])
async def test_a_connection_that_sends_nothing_is_closed(
    server: str, short_timeouts: Service, hypercorn_capped: Service
) -> None:
    service = short_timeouts if server == "granian" else hypercorn_capped
    started = time.monotonic()
    silent = await RawConnection.open(service.ports["http"])
    partial = await RawConnection.open(service.ports["http"])
    await partial.send(b"GET /api/v1/me HTTP/1.1\r\nHost: x\r\n")
    assert await silent.closed_by_server(timeout=5.0)
    assert await partial.closed_by_server(timeout=5.0)
    assert time.monotonic() - started < 4.0


@pytest.fixture(scope="module")
def capped_at_two(stack: Gatehouse) -> dict[str, Service]:
    """Granian and Hypercorn with short timeouts and room for 2 connections per worker."""
    return {
        server: stack.start_http(
            {
                **SHORT_TIMEOUTS,
                "GATEHOUSE_HTTP_SERVER": server,
                "GATEHOUSE_HTTP_MAX_CONNECTIONS": "2",
            }
        )
        for server in ("granian", "hypercorn")
    }


def stalled_reader(port: int) -> socket.socket:
    """A connection that asks for about 12 MB of answers and never reads one."""
    reader = socket.socket()
    reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a window that fills at once
    reader.connect(("127.0.0.1", port))
    reader.sendall(request_head("GET", "/openapi.json") * 300)
    return reader


@pytest.mark.parametrize("server", ["granian", "hypercorn"])
async def test_clients_that_stop_reading_do_not_keep_their_connections(
    server: str, capped_at_two: dict[str, Service]
) -> None:
    service = capped_at_two[server]
    stalled = [stalled_reader(service.ports["http"]) for _ in range(2)]

    async def served() -> bool:
        # Past the cap Hypercorn closes a new connection, Granian leaves it in the backlog.
        async with httpx.AsyncClient(timeout=1.0, trust_env=False) as client:
            try:
                return (await client.get(f"{url(service)}/healthz")).status_code == 200
            except httpx.HTTPError:
                return False

    try:
        await wait_until_async(
            served, 10.0, "a new client to be served once the stalled connections are dropped"
        )
    finally:
        for reader in stalled:
            reader.close()
    # A client that went away is no failure of the server's: no error lines, no tracebacks.
    errors = [line for line in service.process.tail(500).splitlines() if '"level": "error"' in line]
    assert errors == []


@pytest.mark.parametrize("server", ["granian", "hypercorn"])
async def test_keep_alive_lasts_while_requests_come_and_ends_when_idle(
    server: str, short_timeouts: Service, hypercorn_capped: Service
) -> None:
    service = short_timeouts if server == "granian" else hypercorn_capped
    connection = await RawConnection.open(service.ports["http"])
    # One request every 0.4 s for 2 s, twice the idle timeout: one connection serves them all.
    for _ in range(5):
        await connection.send(request_head("GET", "/healthz"))
        assert (await connection.answer(timeout=5.0)).status == 200
        await asyncio.sleep(0.4)  # the client's pace, not a synchronisation
    assert await connection.closed_by_server(timeout=5.0)


async def test_hypercorn_closes_connections_past_the_cap_at_once(
    hypercorn_capped: Service,
) -> None:
    port = hypercorn_capped.ports["http"]
    ops = f"http://127.0.0.1:{hypercorn_capped.ports['ops']}"

    async def ops_ready() -> bool:
        async with httpx.AsyncClient(timeout=2.0, trust_env=False) as client:
            return (await client.get(f"{ops}/readyz")).status_code == 200

    # The ops port learns readiness from the workers' heartbeats, a beat later than they do.
    await wait_until_async(ops_ready, 5.0, "the ops port to report the worker ready")
    held = [await RawConnection.open(port) for _ in range(3)]
    for connection in held:  # each is accepted and served
        await connection.send(request_head("GET", "/healthz"))
        assert (await connection.answer(timeout=5.0)).status == 200
    extra = await RawConnection.open(port)
    started = time.monotonic()
    assert await extra.closed_by_server(timeout=0.5)
    assert time.monotonic() - started < 0.5
    # The pod's probes do not compete with clients for the cap: the ops port still answers.
    async with httpx.AsyncClient(timeout=2.0, trust_env=False) as client:
        assert (await client.get(f"{ops}/healthz")).status_code == 200
        assert (await client.get(f"{ops}/readyz")).json()["status"] == "ready"
    assert time.monotonic() - started < 1.0, "the held connections may have timed out"
    for connection in held:
        connection.close()


async def test_granian_refuses_cleartext_http2(short_timeouts: Service) -> None:
    connection = await RawConnection.open(short_timeouts.ports["http"])
    await connection.send(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000"))
    assert await connection.closed_by_server(timeout=2.0)


# Malformed requests: a 4xx with the usual body, never a 5xx or a dropped connection


async def test_a_20kb_authorization_header_gets_431(
    client: httpx.AsyncClient, short_timeouts: Service
) -> None:
    response = await client.get("/api/v1/me", headers={"Authorization": "Bearer " + "a" * 20_000})
    assert response.status_code == 431, response.text
    assert response.json()["error"]["code"] == "request_header_fields_too_large"
    await still_ready(short_timeouts)


async def test_deeply_nested_json_gets_400(
    client: httpx.AsyncClient, short_timeouts: Service
) -> None:
    for body, expected in [
        (b"[" * 50_000, (400, "invalid_json")),
        (b'{"username": ' + b"[" * 30_000 + b"]" * 30_000 + b"}", (400, "invalid_json")),
        (b"[" * 50_000 + b"]" * 50_000, (413, "payload_too_large")),  # over 64 KiB
    ]:
        response = await client.post("/api/v1/users", content=body, headers=JSON)
        assert (response.status_code, response.json()["error"]["code"]) == expected
    await still_ready(short_timeouts)


async def test_nul_bytes_in_fields_get_400(
    client: httpx.AsyncClient, short_timeouts: Service
) -> None:
    escaped = await client.post(
        "/api/v1/users",
        content=b'{"username": "ann\\u0000x", "password": "password1"}',
        headers=JSON,
    )
    assert (escaped.status_code, escaped.json()["error"]["code"]) == (400, "invalid_username")
    raw = await client.post(
        "/api/v1/sessions", content=b'{"username": "ann\x00x", "password": "p"}', headers=JSON
    )
    assert (raw.status_code, raw.json()["error"]["code"]) == (400, "invalid_json")
    await still_ready(short_timeouts)


@pytest.mark.parametrize(
    "body",
    [
        {"username": 5, "password": "password1"},
        {"username": ["ann"], "password": "password1"},
        {"username": "ann", "password": {"x": 1}},
        {"username": None, "password": "password1"},
    ],
)
async def test_wrong_json_types_get_400(
    client: httpx.AsyncClient, short_timeouts: Service, body: dict[str, object]
) -> None:
    for path in ("/api/v1/users", "/api/v1/sessions"):
        response = await client.post(path, json=body)
        assert (response.status_code, response.json()["error"]["code"]) == (400, "invalid_request")
    await still_ready(short_timeouts)


async def test_a_5000_character_request_id_is_replaced(
    client: httpx.AsyncClient, short_timeouts: Service
) -> None:
    response = await client.get("/api/v1/me", headers={"X-Request-ID": "r" * 5000})
    assert (response.status_code, response.json()["error"]["code"]) == (401, "unauthenticated")
    assert len(response.headers["x-request-id"]) == 16
    await still_ready(short_timeouts)


# The ops port


@pytest.fixture(scope="module")
def metrics_off_the_api_port(stack: Gatehouse) -> Service:
    """Granian as the chart runs it: /metrics on the ops port only."""
    return stack.start_http({"GATEHOUSE_METRICS_ON_API_PORT": "false"})


async def test_metrics_can_be_kept_off_the_api_port(metrics_off_the_api_port: Service) -> None:
    service = metrics_off_the_api_port
    ops_url = f"http://127.0.0.1:{service.ports['ops']}"
    async with httpx.AsyncClient(timeout=5.0, trust_env=False) as client:
        on_api_port = await client.get(f"{url(service)}/metrics")
        assert (on_api_port.status_code, on_api_port.json()["error"]["code"]) == (404, "not_found")
        for path in ("/healthz", "/readyz"):
            assert (await client.get(f"{url(service)}{path}")).status_code == 200
            assert (await client.get(f"{ops_url}{path}")).status_code == 200
        sample = 'gatehouse_http_request_seconds_count{route="/readyz",status="200"}'

        async def counted() -> bool:
            # A worker adds a request to its metrics once the response is sent, and the page
            # is a copy up to a second old: the sample may show up a moment later.
            metrics = await client.get(f"{ops_url}/metrics")
            assert metrics.status_code == 200
            return sample in metrics.text

        await wait_until_async(counted, 10.0, f"the ops port's /metrics to have {sample}")


async def test_slow_bodies_over_cleartext_http2_get_408_under_hypercorn(
    hypercorn_capped: Service,
) -> None:
    """Hypercorn serves h2c with prior knowledge: its streams get the same body deadline."""
    import h2.config
    import h2.connection
    import h2.events

    connection = await RawConnection.open(hypercorn_capped.ports["http"])
    h2c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    h2c.initiate_connection()
    headers = [
        (":method", "POST"),
        (":path", "/api/v1/sessions"),
        (":scheme", "http"),
        (":authority", "127.0.0.1"),
        ("content-type", "application/json"),
        ("content-length", "100"),
    ]
    streams = [1, 3, 5, 7]
    for stream_id in streams:
        h2c.send_headers(stream_id, headers)
        h2c.send_data(stream_id, b"{")
    await connection.send(h2c.data_to_send())
    statuses: dict[int, bytes] = {}
    bodies: dict[int, bytes] = {}
    async with asyncio.timeout(5.0):
        while len(statuses) < len(streams) or any(
            not bodies.get(stream_id, b"").endswith(b"}") for stream_id in streams
        ):
            data = await connection.reader.read(65536)
            assert data, "the server closed the connection"
            for event in h2c.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    statuses[event.stream_id] = dict(event.headers)[b":status"]
                elif isinstance(event, h2.events.DataReceived):
                    bodies[event.stream_id] = bodies.get(event.stream_id, b"") + event.data
                    h2c.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            await connection.send(h2c.data_to_send())
    assert set(statuses.values()) == {b"408"}
    assert all(b'"request_timeout"' in body for body in bodies.values())
    connection.close()
    await still_ready(hypercorn_capped)
