"""The cost of mutual TLS on the auth RPC: the same reads and logins against an mTLS stack and a
plaintext one, side by side in one run. Reads twice: at the peak (the rate the target compares)
and at a fixed rate far below it (the CPU each read costs, which a busy machine moves less).

Both stacks run at once on the same stores (two auth replicas and one HTTP process each, the
same JWT key, each with its own etcd records), so the loads alternate between them without a
restart: odd rounds load the plaintext stack first, even rounds the mTLS one (the reads'
rounds first, then the logins'), and a drift in what else the machine runs hits both. Each
load also counts, on its stack's auth replicas, the TLS handshakes and the calls of its window:
connections are pooled, so handshakes are rare.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial

from bench.api import GATEHOUSE
from bench.procstats import ProcessWatch
from bench.rpc_counters import RpcCounters, read_counters
from bench.scenarios import ScenarioResult
from bench.suites import Suite, Target, TokenMinter
from bench.systems import GatehouseUnderTest
from bench.tls_figures import (
    CALLS_NOTE,
    FIXED_RATE,
    HANDSHAKES_NOTE,
    LOGINS,
    MTLS_SYSTEM,
    PLAINTEXT_SYSTEM,
    READS,
    round_scenario,
)


def compare_rpc_tls(
    suite: Suite, watch: ProcessWatch, stacks: dict[str, GatehouseUnderTest], server: str,
    users: int, mint: TokenMinter, tokens: list[str],
) -> list[str]:  # fmt: skip
    """Run the comparison's rounds (results kept by `suite`) with each stack of `stacks`
    (PLAINTEXT_SYSTEM and MTLS_SYSTEM) serving `users` users, HTTP under `server`; returns the
    report's notes on the mTLS replicas' handshakes."""
    mtls_urls = stacks[MTLS_SYSTEM].auth_metrics_urls()
    before = read_counters(mtls_urls)
    targets = {}
    try:
        for system, stack in stacks.items():
            endpoint = stack.start_http(server)
            targets[system] = Target(system, server, endpoint, GATEHOUSE, users, mint)
        for number in range(1, suite.plan.tls_read_rounds + 1):
            for system in _order(number):
                peak = partial(
                    suite.warm_peak, targets[system], tokens, round_scenario(READS, number)
                )
                _counted(watch, stacks[system], peak)
            for system in _order(number):
                fixed = partial(
                    suite.fixed_rate, targets[system], tokens, round_scenario(FIXED_RATE, number)
                )
                _counted(watch, stacks[system], fixed)
        for number in range(1, suite.plan.tls_login_rounds + 1):
            for system in _order(number):
                logins = partial(suite.login, targets[system], round_scenario(LOGINS, number))
                _counted(watch, stacks[system], logins)
        during = read_counters(mtls_urls, settled_since=time.monotonic()) - before
    finally:
        for stack in stacks.values():
            stack.stop_http()
    return handshake_notes(before, during)


def handshake_notes(before: RpcCounters, during: RpcCounters) -> list[str]:
    """`before`: the mTLS replicas' counters from their start to the comparison (every HTTP
    process of the suite's loads, when they ran); `during`: over the comparison."""
    notes = []
    if before.calls:
        notes.append(
            f"RPC mutual TLS: the auth replicas completed {before.tls_handshakes:,.0f} TLS "
            f"handshakes for {before.calls:,.0f} calls from their start to the comparison with "
            "plaintext (every Gatehouse scenario on the first table size, under every server)."
        )
    notes.append(
        f"RPC mutual TLS: {during.tls_handshakes:,.0f} TLS handshakes for {during.calls:,.0f} "
        "calls during the comparison with plaintext, its HTTP process's start included."
    )
    return notes


def _order(number: int) -> tuple[str, str]:
    """Odd rounds load the plaintext stack first, even ones the mTLS one."""
    return (PLAINTEXT_SYSTEM, MTLS_SYSTEM) if number % 2 else (MTLS_SYSTEM, PLAINTEXT_SYSTEM)


def _counted(
    watch: ProcessWatch, stack: GatehouseUnderTest, load: Callable[[], ScenarioResult]
) -> ScenarioResult:
    """Run `load` with the stack's processes watched; note its replicas' RPC counters over it."""
    urls = stack.auth_metrics_urls()
    with watch.watching(stack.processes()):
        before = read_counters(urls)
        result = load()
    window = read_counters(urls, settled_since=time.monotonic()) - before
    result.notes[HANDSHAKES_NOTE] = window.tls_handshakes
    result.notes[CALLS_NOTE] = window.calls
    return result
