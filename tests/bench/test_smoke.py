"""The load harness end to end at toy size: `python -m bench --smoke` against a real stack.

Checks that every scenario ran against every system, that the numbers are sane for what the
load was, and that the report and its plots were written. Seconds per scenario: it tests the
harness, not Gatehouse's performance.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.suites import CLOSED_LOOP_PREFIX, Plan

# The module's run of the harness counts against its first test's timeout: 480 s at most.
pytestmark = pytest.mark.timeout(600)

REPO_ROOT = Path(__file__).resolve().parents[2]
GATEHOUSE_SCENARIOS = {
    "profile-warm-peak", "profile-warm-1000conn", "profile-warm-70pct", "profile-cold-2000-peak",
    "profile-cold-2000-open", "login", "signup", "mix", "storm-baseline", "storm", "overload",
    *(f"{CLOSED_LOOP_PREFIX}{connections}" for connections in Plan.smoke().closed_loop_connections),
}  # fmt: skip
PEER_SCENARIOS = {
    "profile-warm-peak", "profile-cold-2000-peak", "profile-cold-2000-open", "login", "signup",
    "mix", "overload",
}  # fmt: skip


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench-report")
    state = tmp_path_factory.mktemp("bench-state")
    # The peer's virtualenv is shared with `make bench`: built once per machine.
    venv = REPO_ROOT / ".state" / "bench" / "reference-venv"
    # 75 s alone on the 2-CPU machine, up to about 3 min beside the suite's other worker (each
    # login and signup run first waits up to Plan.smoke().settle_seconds for an idle machine,
    # which it seldom gets there).
    completed = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--servers", "granian", "--out", str(out),
         "--state-dir", str(state), "--peer-venv", str(venv)],
        cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True, text=True, timeout=480, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return out


def _results(out: Path) -> dict[str, dict[str, object]]:
    data = json.loads((out / "results.json").read_text())
    return {f"{r['system']}/{r['scenario']}": r for r in data["results"]}


def test_every_scenario_ran_against_every_system(smoke_run: Path) -> None:
    results = _results(smoke_run)
    assert {
        k.split("/", 1)[1] for k in results if k.startswith("gatehouse/")
    } == GATEHOUSE_SCENARIOS
    assert {k.split("/", 1)[1] for k in results if k.startswith("fastapi-users/")} == PEER_SCENARIOS
    assert "starlette/profile-warm-peak" in results


def test_the_figures_are_sane(smoke_run: Path) -> None:
    results = _results(smoke_run)
    for key, result in results.items():
        summary = result["summary"]
        assert result["rate"] > 0, key
        assert 0 < summary["p50"] <= summary["p99"] <= summary["max"] < 30, key
        assert summary["timeouts"] == 0, key
    for key in (
        "gatehouse/profile-warm-peak",
        "gatehouse/login",
        "gatehouse/signup",
        "fastapi-users/login",
    ):
        assert results[key]["goodput"] > 0, key
    # Open loop at a rate far below capacity: every request answered, at the offered rate.
    baseline = results["gatehouse/storm-baseline"]
    assert baseline["rate"] == pytest.approx(baseline["offered_rate"], rel=0.1)
    # The login storm ran, was answered, and lasted as long as the reads measured under it.
    storm = results["gatehouse/storm"]["notes"]
    assert storm["storm_ended_early"] == 0
    assert storm["storm_logins_per_s"] > 0
    signup = results["gatehouse/signup"]
    assert signup["notes"]["lost_signups"] == 0
    assert signup["notes"]["rows"] >= signup["notes"]["acknowledged"] > 0
    for process in results["gatehouse/profile-warm-peak"]["usage"]["processes"]:
        if process["name"].startswith(("auth-", "http-")):
            assert 0 < process["lifetime_peak_rss_bytes"] < 1 << 30, process


def _handshakes_noted(out: Path, during: str) -> tuple[int, int]:
    """(handshakes, calls) of the run's note on the mTLS replicas `during` ("from their start"
    or "during the comparison")."""
    notes = json.loads((out / "results.json").read_text())["facts"]["notes"]
    pattern = rf"([\d,]+) TLS handshakes for ([\d,]+) calls {during}"
    (found,) = [m for m in (re.search(pattern, note) for note in notes) if m]
    return int(found[1].replace(",", "")), int(found[2].replace(",", ""))


def test_mtls_and_plaintext_took_the_same_loads_side_by_side(smoke_run: Path) -> None:
    results = _results(smoke_run)
    for system in ("gatehouse-plaintext", "gatehouse-mtls"):
        for scenario in ("profile-warm-peak-r1", "profile-warm-fixed-r1", "login-r1"):
            result = results[f"{system}/{scenario}"]
            assert result["goodput"] > 0, (system, scenario)
            assert result["notes"]["rpc_calls"] > 0, (system, scenario)
            if system == "gatehouse-plaintext":
                assert result["notes"]["rpc_tls_handshakes"] == 0, scenario
    # Every scenario of the suite went through mutual TLS; pooled, so handshakes are few.
    handshakes, calls = _handshakes_noted(smoke_run, "from their start")
    assert 0 < handshakes < calls
    handshakes, calls = _handshakes_noted(smoke_run, "during the comparison")
    assert 0 < handshakes < calls
    report = (smoke_run / "report.md").read_text()
    assert "| granian | mTLS reads >= 0.90x plaintext |" in report
    assert "## Mutual TLS on the auth RPC against plaintext" in report


def test_the_report_shows_every_target_and_plot(smoke_run: Path) -> None:
    report = (smoke_run / "report.md").read_text()
    for target in ("profile read peak >= 2,800 req/s", "login >= 0.9x bcrypt ceiling",
                   "overload: goodput >= 0.9x peak", "peak RSS of each Gatehouse process",
                   "closed loops of 128 and 512 connections"):  # fmt: skip
        assert target in report
    # Logins and signups are held to the bcrypt ceiling measured right before and after them,
    # and reported against bcrypt alone on every CPU at once, measured there too.
    assert report.count("bcrypt ceiling") >= 2
    assert report.count("/s beside the run (before ") == 4
    assert report.count("vs bcrypt alone on every CPU at once (reported)") == 2
    plots = sorted(path.name for path in smoke_run.glob("*.png"))
    assert plots == [
        "latency-fastapi-users-granian.png",
        "latency-gatehouse-granian.png",
        "latency-gatehouse-mtls-granian.png",
        "latency-gatehouse-plaintext-granian.png",
        "latency-starlette-granian.png",
        "throughput.png",
    ]
    for plot in plots:
        assert (smoke_run / plot).read_bytes().startswith(b"\x89PNG"), plot
        assert f"]({plot})" in report
