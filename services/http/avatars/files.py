"""GET /avatars/<key>: profile pictures, uploaded or default, with immutable cache headers.

Keys name fixed bytes (avatar_keys), so browsers and proxies may keep a picture for a year,
and each worker keeps the pictures it served last in memory: a picture viewed again costs no
call to the blob store.
"""

from __future__ import annotations

from collections import OrderedDict

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.http.avatars.blobstore import Blob, BlobStore
from services.http.avatars.identicons import identicon_svg
from services.http.avatars.keys import default_picture_owner, uploaded_digest
from services.http.errors import ApiError

CACHE_CONTROL = "public, max-age=31536000, immutable"
# A picture is never a document: nothing in it may run, even when opened on its own.
PICTURE_CSP = "default-src 'none'; style-src 'unsafe-inline'; sandbox"
MEMORY_CACHE_BYTES = 16 * 1024 * 1024
_SVG = "image/svg+xml"


class _RecentBlobs:
    """The blobs read last, up to a total size in bytes."""

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._bytes = 0
        self._blobs: OrderedDict[str, Blob] = OrderedDict()

    def get(self, key: str) -> Blob | None:
        blob = self._blobs.get(key)
        if blob is not None:
            self._blobs.move_to_end(key)
        return blob

    def add(self, key: str, blob: Blob) -> None:
        if key in self._blobs or len(blob.data) > self._max_bytes:
            return
        self._blobs[key] = blob
        self._bytes += len(blob.data)
        while self._bytes > self._max_bytes:
            _, evicted = self._blobs.popitem(last=False)
            self._bytes -= len(evicted.data)


class AvatarFiles:
    def __init__(self, store: BlobStore, memory_cache_bytes: int = MEMORY_CACHE_BYTES) -> None:
        self._store = store
        self._recent = _RecentBlobs(memory_cache_bytes)

    def routes(self) -> list[Route]:
        return [Route("/avatars/{key:path}", self.serve, methods=["GET"])]

    async def serve(self, request: Request) -> Response:
        key: str = request.path_params["key"]
        owner = default_picture_owner(key)
        digest = uploaded_digest(key)
        if owner is None and digest is None:
            raise _no_picture(request)
        etag = f'"default-{owner}"' if owner is not None else f'"{digest}"'
        if _client_has(request, etag):
            return Response(status_code=304, headers={"ETag": etag, "Cache-Control": CACHE_CONTROL})
        if owner is not None:
            blob = Blob(_SVG, identicon_svg(str(owner)))
        else:
            blob = await self._stored(request, key)
        return Response(
            blob.data,
            media_type=blob.content_type,
            headers={
                "ETag": etag,
                "Cache-Control": CACHE_CONTROL,
                "Content-Security-Policy": PICTURE_CSP,
            },
        )

    async def _stored(self, request: Request, key: str) -> Blob:
        blob = self._recent.get(key)
        if blob is None:
            blob = await self._store.get(key)
            if blob is None:
                raise _no_picture(request)
            self._recent.add(key, blob)
        return blob


def _no_picture(request: Request) -> ApiError:
    return ApiError(404, "not_found", f"there is no picture at {request.url.path}")


def _client_has(request: Request, etag: str) -> bool:
    wanted = request.headers.get("if-none-match", "")
    return wanted.strip() == "*" or etag in (tag.strip() for tag in wanted.split(","))
