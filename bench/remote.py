"""Accounts for a remote run: a deployed Gatehouse has no seeded users this harness knows, so
it signs some up and logs each in once, through the public API, before the load starts."""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from bench.suites import run_tag
from bench.systems import Endpoint

REQUEST_TIMEOUT_SECONDS = 30
_PARALLEL = 8


def _post(endpoint: Endpoint, path: str, body: dict[str, str]) -> tuple[int, dict[str, object]]:
    connection_type = http.client.HTTPSConnection if endpoint.tls else http.client.HTTPConnection
    connection = connection_type(endpoint.host, endpoint.port, timeout=REQUEST_TIMEOUT_SECONDS)
    try:
        connection.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        response = connection.getresponse()
        data = response.read()
        return response.status, json.loads(data) if data else {}
    finally:
        connection.close()


def prepare_accounts(
    endpoint: Endpoint, password: str, count: int, progress: Callable[[str], None]
) -> tuple[list[str], list[str]]:
    """(usernames, session tokens) of `count` accounts created now."""
    prefix = run_tag() + "r"
    progress(f"signing up and logging in {count} accounts on {endpoint.url}")

    def account(index: int) -> tuple[str, str]:
        name = f"{prefix}{index:05d}"
        status, body = _post(endpoint, "/api/v1/users", {"username": name, "password": password})
        if status != 201:
            raise RuntimeError(f"signup of {name} on {endpoint.url} answered {status}: {body}")
        status, body = _post(endpoint, "/api/v1/sessions", {"username": name, "password": password})
        if status != 200 or not isinstance(body.get("token"), str):
            raise RuntimeError(f"login of {name} on {endpoint.url} answered {status}: {body}")
        return name, str(body["token"])

    with ThreadPoolExecutor(_PARALLEL) as pool:
        accounts = list(pool.map(account, range(count)))
    return [name for name, _ in accounts], [token for _, token in accounts]
