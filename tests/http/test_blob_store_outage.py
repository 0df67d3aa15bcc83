"""An unreachable s3 blob store: each picture request is a 503, counted in
gatehouse_http_blob_store_failures, and the log has one line per 10 s, not one per request
(GET /avatars/ needs no session: anyone can make them)."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator

import pytest
from botocore.exceptions import ClientError
from starlette.requests import Request

from devstack import DataStores
from devstack.ports import free_port
from services.foundation.log_throttle import RepeatedWarnings
from services.http import errors
from services.http.avatars.replace import Avatars
from services.http.errors import BlobStoreError, as_api_error
from tests.http.gateway import Gateway, running_gateway
from tests.metric_samples import sample

REQUESTS = 20


@pytest.fixture(autouse=True)
def fresh_throttle(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test counts its own lines: an earlier test's line would hold this one's back."""
    monkeypatch.setattr(errors, "_blob_store_failures", RepeatedWarnings(errors.log, 10.0))


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


class RefusingDeletes:
    held_by_auth_service = False

    async def delete(self, key: str, owner: object) -> None:
        raise BlobStoreError(f"S3 delete of s3://pictures/{key} failed: AccessDenied")


async def test_every_picture_left_stored_is_named_in_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The line is the only record of a deleted account's picture still served publicly at
    /avatars/<key>: each one must be there, not one a minute."""
    avatars = Avatars(None, RefusingDeletes(), None, None, 2)  # type: ignore[arg-type]
    keys = [f"{user}/{os.urandom(32).hex()}.webp" for user in (7, 8, 9)]
    with caplog.at_level(logging.WARNING, logger="services.http"):
        for key in keys:  # three accounts deleted within a minute
            await avatars.account_deleted(key, None, blobs_deleted=False)  # type: ignore[arg-type]
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert [key for key in keys if key not in logged] == []


def failing(operation: str, code: str) -> BlobStoreError:
    cause = ClientError({"Error": {"Code": code, "Message": code}}, operation)
    error = BlobStoreError(f"S3 {operation} failed: {code}")
    error.__cause__ = cause
    return error


def test_an_uploads_other_failure_is_not_held_back_behind_failing_reads(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def request(method: str, path: str) -> Request:
        scope = {"type": "http", "method": method, "path": path, "headers": [], "query_string": b""}
        return Request(scope)

    with caplog.at_level(logging.WARNING, logger="services.http"):
        for number in range(5):  # anyone's GETs of random keys, while the store is slow
            as_api_error(
                request("GET", f"/avatars/7/{number:064x}.webp"), failing("get", "SlowDown")
            )
        as_api_error(request("POST", "/api/v1/me/picture"), failing("put", "AccessDenied"))
    assert any("AccessDenied" in record.getMessage() for record in caplog.records)
