"""An unreachable s3 blob store: each picture request is a 503, counted in
gatehouse_http_blob_store_failures, and the log has one line per 10 s, not one per request
(GET /avatars/ needs no session: anyone can make them)."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator

import pytest

from devstack import DataStores
from devstack.ports import free_port
from tests.http.gateway import Gateway, running_gateway
from tests.metric_samples import sample

REQUESTS = 20


@pytest.fixture
async def gateway_without_its_store(
    data_stores: DataStores, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Gateway]:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    async with running_gateway(
        data_stores,
        blob_store="s3",
        s3_bucket="pictures",
        s3_endpoint_url=f"http://127.0.0.1:{free_port()}",  # nothing listens
        s3_timeout=0.5,
    ) as gateway:
        yield gateway


async def test_an_unreachable_store_is_counted_and_logged_once_not_per_request(
    gateway_without_its_store: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    before = sample("gatehouse_http_blob_store_failures_total", operation="get")
    with caplog.at_level(logging.WARNING, logger="services.http"):
        for _ in range(REQUESTS):
            key = f"7/{os.urandom(32).hex()}.webp"  # a new key each time: no cached picture
            answer = await gateway_without_its_store.client.get(f"/avatars/{key}")
            assert answer.status_code == 503, answer.text
            assert answer.json()["error"]["code"] == "storage_unavailable"
    lines = [r.getMessage() for r in caplog.records if "S3 get of" in r.getMessage()]
    assert len(lines) == 1, f"{len(lines)} lines for {REQUESTS} requests"
    failures = sample("gatehouse_http_blob_store_failures_total", operation="get") - before
    assert failures == REQUESTS
