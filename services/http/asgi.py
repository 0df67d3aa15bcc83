"""The application factory the ASGI servers load in each worker process.

Granian loads `services.http.asgi:build_app` with factory=True, Hypercorn evaluates
`services.http.asgi:build_app()`; either way every worker builds its own app, pools and
watchers on its own event loop.
"""

from __future__ import annotations

from starlette.applications import Starlette

from services.foundation.allocator import return_large_buffers
from services.foundation.config import load_settings
from services.foundation.heap import settle_after_startup
from services.foundation.logs import configure_logging
from services.http import SERVICE_NAME
from services.http.app import create_app
from services.http.settings import HttpSettings


def build_app() -> Starlette:
    settings = load_settings(HttpSettings)
    configure_logging(SERVICE_NAME, settings.log_level)
    return_large_buffers()  # picture uploads of megabytes must not hold memory once answered
    if settings.server == "hypercorn":
        from services.http.workers.hypercorn_connections import install_connection_cap

        install_connection_cap(settings.max_connections)
    app = create_app(settings)
    # Here, not in the app's lifespan: the tests run apps' lifespans in pytest's process.
    settle_after_startup(settings.gc_young_threshold)
    return app
