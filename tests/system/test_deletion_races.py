"""An account deleted while one of its picture uploads is in flight keeps no picture: the upload
runs in an HTTP app in this process (so the test can hold it at a chosen step), the deletion
through a real HTTP process, both against the two real auth replicas and the database blob
store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest

import services.http.app as app_module
from devstack.gatehouse import Gatehouse
from devstack.ports import wait_until_async
from devstack.rpc_tls import SERVER_NAME
from services.http.app import create_app
from services.http.auth_client import AuthClient
from services.http.avatars.blobstore import Blob, BlobStore
from services.http.avatars.keys import AVATARS_PATH
from services.http.settings import HttpSettings
from services.http.tokens import Session
from tests.system.support import bearer
from tests.system.test_account_lifecycle import (
    PASSWORD,
    delete_account,
    logged_in,
    picture,
    signed_up,
)

HOLD_TIMEOUT = 30.0


@dataclass
class HeldBlobStore:
    """The app's blob store, holding the next `put` before or after storing the blob until
    `release` is set."""

    store: BlobStore
    hold: str = "none"  # "before" or "after" the blob is stored
    reached: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    stored_keys: list[str] = field(default_factory=list)

    @property
    def held_by_auth_service(self) -> bool:
        return self.store.held_by_auth_service

    async def put(self, key: str, data: bytes, content_type: str, owner: Session) -> None:
        self.stored_keys.append(key)
        if self.hold == "before":
            await self._wait()
        await self.store.put(key, data, content_type, owner)
        if self.hold == "after":
            await self._wait()

    async def get(self, key: str) -> Blob | None:
        return await self.store.get(key)

    async def delete(self, key: str, owner: Session) -> None:
        await self.store.delete(key, owner)

    async def _wait(self) -> None:
        self.reached.set()
        await asyncio.wait_for(self.release.wait(), HOLD_TIMEOUT)


@dataclass
class InProcessHttp:
    client: httpx.AsyncClient
    blobs: HeldBlobStore


@pytest.fixture
async def in_process_http(
    gatehouse: Gatehouse, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[InProcessHttp]:
    """An HTTP app of this process on the gatehouse's etcd (its auth replicas, its signing
    keys), its blob store held at will."""
    held: list[HeldBlobStore] = []
    open_blob_store = app_module.open_blob_store

    def open_held(settings: HttpSettings, auth: AuthClient) -> BlobStore:
        held.append(HeldBlobStore(open_blob_store(settings, auth)))
        return held[-1]

    monkeypatch.setattr(app_module, "open_blob_store", open_held)
    # The HTTP tier's etcd user and RPC client certificate, as the gatehouse's HTTP pods.
    etcd = gatehouse.stores.tier_access("http")
    tls = gatehouse.rpc_certificates
    assert tls is not None, "the shared stack runs the RPC over mutual TLS"
    settings = HttpSettings(
        etcd_endpoints=etcd.endpoints,
        etcd_username=etcd.username,
        etcd_password_file=etcd.password_file,
        etcd_ca_file=etcd.ca_file,
        etcd_cert_file=etcd.cert_file,
        etcd_key_file=etcd.key_file,
        rpc_tls="mtls",
        rpc_tls_ca=str(tls.http.ca_path),
        rpc_tls_cert=str(tls.http.cert_path),
        rpc_tls_key=str(tls.http.key_path),
        rpc_tls_server_name=SERVER_NAME,
        csrf_secret=gatehouse.secrets.csrf_secret,
        call_timeout=10.0,
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        await wait_until_async(
            lambda: app.state.auth.readiness() is None and app.state.tokens.key_count > 0,
            15.0,
            "the in-process app to find the auth replicas and the signing keys",
        )
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gatehouse.test", timeout=30.0
        ) as client:
            yield InProcessHttp(client, held[0])


async def upload_racing_deletion(
    uploader: InProcessHttp,
    deleter: httpx.AsyncClient,
    token: str,
    upload: bytes,
) -> httpx.Response:
    """Start the upload, delete the account while it is held, release it: its answer."""
    uploading = asyncio.create_task(
        uploader.client.put("/api/v1/me/avatar", content=upload, headers=bearer(token))
    )
    await asyncio.wait_for(uploader.blobs.reached.wait(), HOLD_TIMEOUT)
    deleted = await delete_account(deleter, token, PASSWORD)
    assert deleted.status_code == 204, deleted.text
    uploader.blobs.release.set()
    return await uploading


async def stored(clients: list[httpx.AsyncClient], url: str) -> set[int]:
    """The status of the picture's URL on the real HTTP processes (neither served it before)."""
    return {(await client.get(url)).status_code for client in clients}


async def uploaded_picture_url(client: httpx.AsyncClient, token: str, upload: bytes) -> str:
    answer = await client.put("/api/v1/me/avatar", content=upload, headers=bearer(token))
    assert answer.status_code == 200, answer.text
    return str(answer.json()["avatar_url"])


async def test_a_new_picture_stored_before_the_deletion_is_deleted_with_the_refused_update(
    in_process_http: InProcessHttp, clients: list[httpx.AsyncClient]
) -> None:
    first, second = clients
    token = await logged_in(first, await signed_up(first))
    old_url = await uploaded_picture_url(first, token, picture("red"))
    in_process_http.blobs.hold = "after"

    answer = await upload_racing_deletion(in_process_http, second, token, picture("blue"))

    assert answer.status_code == 401, answer.text
    (new_key,) = in_process_http.blobs.stored_keys
    assert old_url != AVATARS_PATH + new_key
    assert await stored(clients, old_url) == {404}
    assert await stored(clients, AVATARS_PATH + new_key) == {404}


async def test_the_same_picture_stored_again_after_the_deletion_is_deleted_again(
    in_process_http: InProcessHttp, clients: list[httpx.AsyncClient]
) -> None:
    """The upload has the key of the account's own picture: the deletion deletes that blob
    while the upload is held, then the upload stores it again. The refused profile update
    must delete it, though its key is the one the profile had."""
    first, second = clients
    token = await logged_in(first, await signed_up(first))
    url = await uploaded_picture_url(first, token, picture("green"))
    in_process_http.blobs.hold = "before"

    answer = await upload_racing_deletion(in_process_http, second, token, picture("green"))

    assert answer.status_code == 401, answer.text
    assert [AVATARS_PATH + key for key in in_process_http.blobs.stored_keys] == [url]
    assert await stored(clients, url) == {404}
