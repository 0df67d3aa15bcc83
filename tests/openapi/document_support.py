"""The app whose routes the document describes, built without starting it, and its document."""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette

from services.http.app import create_app
from services.http.openapi.document import build_document
from services.http.settings import HttpSettings
from tests.http.gateway import TEST_CSRF_SECRET


def unstarted_app() -> Starlette:
    """The HTTP tier's app as a worker builds it; its lifespan never runs, so nothing is reached."""
    return create_app(HttpSettings(etcd_endpoints=("127.0.0.1:1",), csrf_secret=TEST_CSRF_SECRET))


def document_of(app: Starlette) -> dict[str, Any]:
    return build_document(app.routes, session_cookie="session")
