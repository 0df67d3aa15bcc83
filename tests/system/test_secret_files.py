"""The stack's processes read their secrets from files, as the chart's pods do (README,
"Configuration"): no process of the stack, the HTTP workers and the picture decoders' fork
server included, holds a secret in its environment, which every child process inherits; the
HTTP processes have no file of the auth replicas' secrets either."""

from __future__ import annotations

import stat
from pathlib import Path

from devstack.gatehouse import Gatehouse
from devstack.process import children_of


def _descendants(pid: int) -> list[int]:
    found = [pid]
    for child in children_of(pid):
        found += _descendants(child)
    return found


def _environment(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = (entry.decode(errors="replace").partition("=") for entry in raw.split(b"\0") if entry)
    return {name: value for name, _, value in pairs}


def test_no_process_of_the_stack_holds_a_secret_in_its_environment(gatehouse: Gatehouse) -> None:
    stores = gatehouse.stores.service_env()
    secrets = {
        "GATEHOUSE_PEPPERS": gatehouse.secrets.peppers,
        "GATEHOUSE_DEVICE_COOKIE_SECRET": gatehouse.secrets.device_cookie_secret,
        "GATEHOUSE_CSRF_SECRET": gatehouse.secrets.csrf_secret,
        "GATEHOUSE_MYSQL_PRIMARY_DSN": stores["GATEHOUSE_MYSQL_PRIMARY_DSN"],
        "GATEHOUSE_MYSQL_REPLICA_DSNS": stores["GATEHOUSE_MYSQL_REPLICA_DSNS"],
        "GATEHOUSE_REDIS_URL": stores["GATEHOUSE_REDIS_URL"],
    }
    auth_only = [name for name in secrets if name != "GATEHOUSE_CSRF_SECRET"]
    services = [*gatehouse.auth, *gatehouse.http]
    pids = [pid for service in services for pid in _descendants(service.process.pid)]
    assert len(pids) > len(services), "the HTTP processes' workers were not found"
    for pid in pids:
        environment = _environment(pid)
        leaked = [
            name for name, secret in secrets.items() if secret in "\0".join(environment.values())
        ]
        assert not leaked, f"pid {pid} holds {leaked} in its environment"
    for service, names in (
        (gatehouse.auth[0], auth_only),
        (gatehouse.http[0], ["GATEHOUSE_CSRF_SECRET"]),
    ):
        environment = _environment(service.process.pid)
        for name in names:
            path = Path(environment[f"{name}_FILE"])
            assert path.read_text() == secrets[name]
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    http_environment = _environment(gatehouse.http[0].process.pid)
    assert not [name for name in auth_only if f"{name}_FILE" in http_environment]
