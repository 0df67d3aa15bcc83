"""The cost of mutual TLS on the auth RPC as the report states it: rounds paired per load, the
read target against plaintext, and the handshakes counted from the replicas' metrics."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from bench import report
from bench import tls_figures as tls
from bench.latency import Summary
from bench.procstats import ProcessUsage, WindowUsage
from bench.rpc_counters import RpcCounters, parse_counters
from bench.scenarios import ScenarioResult

SECONDS = 8.0


def _result(
    system: str, load: str, number: int, per_second: float, notes: dict[str, float] | None = None,
    cpu_ms: float = 1.0,
) -> ScenarioResult:  # fmt: skip
    answers = round(per_second * SECONDS)
    summary = Summary(
        seconds=SECONDS, answered=answers, statuses={200: answers}, timeouts=0,
        connection_errors=0, p50=0.001, p90=0.002, p99=0.003, max=0.004,
    )  # fmt: skip
    usage = WindowUsage(
        SECONDS, [ProcessUsage("auth-1", 1, answers * cpu_ms / 1000, 1, 1)], 1.0, 0.0, 0.0
    )
    return ScenarioResult(
        system, "granian", tls.round_scenario(load, number), "wrk", 64, None, summary, usage,
        notes=dict(notes or {}),
    )  # fmt: skip


def _pair(load: str, number: int, plaintext: float, mtls: float) -> list[ScenarioResult]:
    counted = {tls.HANDSHAKES_NOTE: 2.0, tls.CALLS_NOTE: mtls * SECONDS}
    return [
        _result(
            tls.PLAINTEXT_SYSTEM, load, number, plaintext, {tls.CALLS_NOTE: plaintext * SECONDS}
        ),
        _result(tls.MTLS_SYSTEM, load, number, mtls, counted),
    ]


def test_rounds_pair_up_per_load_and_average() -> None:
    results = [
        *_pair(tls.READS, 1, 2000.0, 1900.0),
        *_pair(tls.READS, 2, 1800.0, 1800.0),
        *_pair(tls.LOGINS, 1, 30.0, 29.0),
        _result(tls.PLAINTEXT_SYSTEM, tls.LOGINS, 2, 31.0),  # its mTLS half never ran
        _result("gatehouse", "granian", 1, 5000.0),  # another system
    ]
    reads, logins = tls.side_by_side(results)
    assert (reads.load, [r.number for r in reads.rounds]) == (tls.READS, [1, 2])
    assert reads.plaintext_rate == pytest.approx(1900.0)
    assert reads.mtls_rate == pytest.approx(1850.0)
    assert reads.ratio == pytest.approx(1850.0 / 1900.0)
    assert reads.rounds[0].ratio == pytest.approx(0.95)
    assert reads.mtls_note(tls.HANDSHAKES_NOTE) == 4.0
    assert reads.cpu_ms(tls.MTLS_SYSTEM) == pytest.approx(1.0)  # _result: 1 ms of CPU per answer
    assert (logins.load, [r.number for r in logins.rounds]) == (tls.LOGINS, [1])


@pytest.mark.parametrize(
    ("mtls", "passed"), [(900.0, True), (899.0, False), (1100.0, True)], ids=str
)
def test_mtls_reads_must_keep_nine_tenths_of_plaintext(mtls: float, passed: bool) -> None:
    checks = {c.target: c for c in tls.check(_pair(tls.READS, 1, 1000.0, mtls))}
    reads = checks["mTLS reads >= 0.90x plaintext"]
    assert reads.passed is passed
    assert reads.ratio == pytest.approx(mtls / 1000.0)
    assert "plaintext 1,000 2xx/s" in reads.reference


def test_logins_and_handshakes_are_reported_not_judged() -> None:
    checks = {c.target: c for c in tls.check(_pair(tls.LOGINS, 1, 30.0, 28.0))}
    logins = checks["mTLS logins vs plaintext (reported)"]
    assert (logins.passed, logins.ratio) == (None, pytest.approx(28.0 / 30.0))
    handshakes = checks["RPC TLS handshakes during the mTLS login loads (reported)"]
    assert handshakes.measured == "2 handshakes for 224 calls"


def test_cpu_per_read_at_a_fixed_rate_is_reported_per_stack() -> None:
    results = [
        _result(tls.PLAINTEXT_SYSTEM, tls.FIXED_RATE, 1, 100.0, cpu_ms=0.5),
        _result(tls.MTLS_SYSTEM, tls.FIXED_RATE, 1, 100.0, cpu_ms=0.55),
    ]
    checks = {c.target: c for c in tls.check(results)}
    cpu = checks["CPU per read at a fixed rate, mTLS vs plaintext (reported)"]
    assert (cpu.measured, cpu.passed, cpu.lower_is_better) == ("mTLS 0.550 ms per 2xx", None, True)
    assert cpu.reference.startswith("plaintext 0.500 ms per 2xx")
    assert cpu.ratio == pytest.approx(1.1)


def test_no_comparison_no_rows() -> None:
    assert tls.check([_result(tls.MTLS_SYSTEM, tls.READS, 1, 1000.0)]) == []


def test_counters_sum_every_method_and_status_of_a_real_exposition() -> None:
    registry = CollectorRegistry()
    handshakes = Counter("gatehouse_auth_rpc_tls_handshakes_total", "handshakes", registry=registry)
    calls = Histogram(
        "gatehouse_auth_rpc_handler_seconds", "calls", ["method", "status"], registry=registry
    )
    handshakes.inc(3)
    for method, status, count in (("GetProfile", "ok", 5), ("Login", "ok", 2), ("Login", "x", 1)):
        for _ in range(count):
            calls.labels(method, status).observe(0.001)
    assert parse_counters(generate_latest(registry).decode()) == RpcCounters(3.0, 8.0)
    assert parse_counters("") == RpcCounters(0.0, 0.0)  # a plaintext replica: none of either
    assert RpcCounters(5.0, 20.0) - RpcCounters(3.0, 8.0) == RpcCounters(2.0, 12.0)


def test_the_report_shows_each_round_and_the_mean(tmp_path: Path) -> None:
    results = [*_pair(tls.READS, 1, 2000.0, 1900.0), *_pair(tls.READS, 2, 1800.0, 1800.0)]
    facts = report.RunFacts("now", 60.0, "test machine", "abc", "--tls-only", 1, None, None)
    text = report.write(tmp_path, facts, results, tls.check(results)).read_text()
    section = text.split("## Mutual TLS on the auth RPC against plaintext")[1]
    assert "| granian | profile-warm-peak | 1 | 2,000.0 | 1,900.0 | 0.950 |" in section
    assert "| granian | profile-warm-peak | **mean** | 1,900.0 | 1,850.0 | **0.974** |" in section
    assert "| granian | mTLS reads >= 0.90x plaintext | mTLS 1,850 2xx/s |" in text
