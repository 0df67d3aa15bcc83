"""GET /avatars/<key>: profile pictures, uploaded or default, with immutable cache headers.

Keys name fixed bytes (avatar_keys), so browsers and proxies may keep a picture for a year:
copies they hold cannot be recalled when the picture is deleted (the README says so). Each
worker keeps the pictures it served lately in memory for a while (picture_cache.py), so a
picture viewed again costs no call to the blob store, and a deleted one is 404 here within
that while. A revalidation of an uploaded picture (If-None-Match) is answered 304 only while
the picture still exists.

An uploaded picture is always served as image/webp, whatever its store says (an S3 object's
metadata may say anything): the blob was re-encoded to WebP before it was stored. Every
/avatars/ answer carries nosniff and the sandboxing Content-Security-Policy
(middleware/picture_sandbox.py).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.http.avatars.blobstore import Blob, BlobStore
from services.http.avatars.identicons import identicon_svg
from services.http.avatars.keys import default_picture_owner, uploaded_digest
from services.http.avatars.picture_cache import PictureCache
from services.http.errors import ApiError

CACHE_CONTROL = "public, max-age=31536000, immutable"
_SVG = "image/svg+xml"
_WEBP = "image/webp"


class AvatarFiles:
    def __init__(self, store: BlobStore, cache: PictureCache) -> None:
        self._store = store
        self._cache = cache

    def routes(self) -> list[Route]:
        return [Route("/avatars/{key:path}", self.serve, methods=["GET"])]

    async def serve(self, request: Request) -> Response:
        key: str = request.path_params["key"]
        owner = default_picture_owner(key)
        digest = uploaded_digest(key)
        if owner is None and digest is None:
            raise _no_picture(request)
        etag = f'"default-{owner}"' if owner is not None else f'"{digest}"'
        if owner is not None:
            if _client_has(request, etag):
                return _not_modified(etag)
            blob = Blob(_SVG, identicon_svg(str(owner)))
        else:
            # Read before a 304 too: a client must not be told that a deleted picture is current.
            stored = await self._stored(request, key)
            if _client_has(request, etag):
                return _not_modified(etag)
            blob = Blob(_WEBP, stored.data)
        return Response(
            blob.data,
            media_type=blob.content_type,
            headers={"ETag": etag, "Cache-Control": CACHE_CONTROL},
        )

    async def _stored(self, request: Request, key: str) -> Blob:
        blob = await self._cache.fetch(key, self._store.get)
        if blob is None:
            raise _no_picture(request)
        return blob


def _not_modified(etag: str) -> Response:
    return Response(status_code=304, headers={"ETag": etag, "Cache-Control": CACHE_CONTROL})


def _no_picture(request: Request) -> ApiError:
    return ApiError(404, "not_found", f"there is no picture at {request.url.path}")


def _client_has(request: Request, etag: str) -> bool:
    wanted = request.headers.get("if-none-match", "")
    return wanted.strip() == "*" or etag in (tag.strip() for tag in wanted.split(","))
