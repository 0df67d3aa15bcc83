"""The ops port's list of live workers (/workers), read from their heartbeats."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx

from services.http.workers.heartbeat import HEARTBEAT_MAX_AGE_SECONDS
from services.http.workers.ops_port import ops_port_app


async def test_workers_lists_the_workers_that_beat_lately(tmp_path: Path) -> None:
    now = time.monotonic()
    (tmp_path / "31.heartbeat").write_text(f'{{"at": {now}, "not_ready": null}}')
    (tmp_path / "32.heartbeat").write_text(f'{{"at": {now}, "not_ready": "no replica"}}')
    stale = now - HEARTBEAT_MAX_AGE_SECONDS - 1
    (tmp_path / "33.heartbeat").write_text(f'{{"at": {stale}, "not_ready": null}}')
    transport = httpx.ASGITransport(app=ops_port_app(tmp_path))
    async with httpx.AsyncClient(transport=transport, base_url="http://ops") as client:
        listed = (await client.get("/workers")).json()["workers"]
    assert [(worker["pid"], worker["ready"], worker["not_ready"]) for worker in listed] == [
        (31, True, None),
        (32, False, "no replica"),
    ]
    assert all(0 <= worker["beat_age_seconds"] < HEARTBEAT_MAX_AGE_SECONDS for worker in listed)


async def test_readyz_is_503_while_any_beating_worker_is_not_ready(tmp_path: Path) -> None:
    now = time.monotonic()
    (tmp_path / "41.heartbeat").write_text(f'{{"at": {now}, "not_ready": null}}')
    (tmp_path / "42.heartbeat").write_text(f'{{"at": {now}, "not_ready": "no replica"}}')
    transport = httpx.ASGITransport(app=ops_port_app(tmp_path))
    async with httpx.AsyncClient(transport=transport, base_url="http://ops") as client:
        waiting = await client.get("/readyz")
        (tmp_path / "42.heartbeat").write_text(f'{{"at": {now}, "not_ready": null}}')
        ready = await client.get("/readyz")
    assert waiting.status_code == 503
    assert waiting.json()["error"]["code"] == "not_ready"
    assert waiting.json()["error"]["message"].startswith("no replica (worker 42: ")
    assert (ready.status_code, ready.json()["status"]) == (200, "ready")


async def test_readyz_is_200_while_connections_are_steered_to_the_ready_worker(
    tmp_path: Path,
) -> None:
    now = time.monotonic()

    def beat(pid: int, not_ready: str | None, *, been_ready: bool) -> None:
        state = {"at": now, "not_ready": not_ready, "been_ready": been_ready}
        (tmp_path / f"{pid}.heartbeat").write_text(json.dumps(state))

    beat(51, None, been_ready=True)
    beat(52, "no signing keys", been_ready=False)
    steered = [True]
    app = ops_port_app(tmp_path, worker_count=2, steered=lambda: steered[0])
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://ops"
    ) as client:
        # At start every worker must be ready once: clients may have connected to either.
        assert (await client.get("/readyz")).status_code == 503
        beat(52, None, been_ready=True)
        assert (await client.get("/readyz")).status_code == 200
        (tmp_path / "52.heartbeat").unlink()  # 52 died; its replacement cannot read the keys
        beat(53, "no signing keys", been_ready=False)
        assert (await client.get("/readyz")).status_code == 200  # 53 takes no connections
        steered[0] = False  # the kernel refused the program: 53 takes connections too
        assert (await client.get("/readyz")).status_code == 503
        steered[0] = True
        beat(51, "no auth replica", been_ready=True)  # keeps the connections it took
        assert (await client.get("/readyz")).status_code == 503


async def test_readyz_lists_the_kids_every_live_worker_holds(tmp_path: Path) -> None:
    now = time.monotonic()
    # Worker 42 has not seen the key being rotated in yet; the stale worker 43 does not count.
    beats = {
        41: (now, ["current", "next"]),
        42: (now, ["current"]),
        43: (now - HEARTBEAT_MAX_AGE_SECONDS - 1, []),
    }
    for pid, (at, kids) in beats.items():
        state = {"at": at, "not_ready": None, "signing_key_kids": kids}
        (tmp_path / f"{pid}.heartbeat").write_text(json.dumps(state))
    transport = httpx.ASGITransport(app=ops_port_app(tmp_path))
    async with httpx.AsyncClient(transport=transport, base_url="http://ops") as client:
        assert (await client.get("/readyz")).json() == {
            "status": "ready",
            "signing_key_kids": ["current"],
        }
        listed = (await client.get("/workers")).json()["workers"]
        assert [(w["pid"], w["signing_key_kids"]) for w in listed] == [
            (41, ["current", "next"]),
            (42, ["current"]),
        ]
        state = {"at": now, "not_ready": None, "signing_key_kids": ["current", "next"]}
        (tmp_path / "42.heartbeat").write_text(json.dumps(state))
        assert (await client.get("/readyz")).json()["signing_key_kids"] == ["current", "next"]


async def test_readyz_waits_for_every_worker_to_start_once(tmp_path: Path) -> None:
    """A worker spawned late would start beating "not ready" after a 200 and take its share of
    the clients meanwhile: the pod is first ready once all its workers beat ready. Later, one
    respawning does not make the others' pod unready."""
    now = time.monotonic()
    (tmp_path / "51.heartbeat").write_text(f'{{"at": {now}, "not_ready": null}}')
    transport = httpx.ASGITransport(app=ops_port_app(tmp_path, worker_count=2))
    async with httpx.AsyncClient(transport=transport, base_url="http://ops") as client:
        one_started = await client.get("/readyz")
        (tmp_path / "52.heartbeat").write_text(f'{{"at": {now}, "not_ready": null}}')
        both_started = await client.get("/readyz")
        (tmp_path / "52.heartbeat").unlink()  # worker 52 died; its successor has not beaten yet
        one_respawning = await client.get("/readyz")
    assert (one_started.status_code, one_started.json()["error"]["message"]) == (
        503,
        "1 of the 2 workers have started",
    )
    assert both_started.status_code == 200
    assert one_respawning.status_code == 200
