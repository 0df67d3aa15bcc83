"""One markdown table per drill, and `report.md` with all of them and a summary."""

from __future__ import annotations

import math
from pathlib import Path

from drills.measure import Latency
from drills.runner import DrillResult
from drills.stack import DRILL_BCRYPT_COST
from drills.targets import format_value

MS = 1000.0


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value * MS:.1f}"


def _latency(figures: Latency) -> str:
    if figures.count == 0:
        return "none"
    return (
        f"{figures.count:,} ({figures.failures:,} failed): "
        f"p50 {_ms(figures.p50)} / p99 {_ms(figures.p99)} / max {_ms(figures.max)} ms"
    )


def _window_span(result: DrillResult, window: str) -> str:
    spans = {
        "before": (0.0, result.fault_start),
        "during": (result.fault_start, result.fault_end),
        "after": (result.fault_end, result.load_end),
    }
    start, end = spans[window]
    return f"{start:.1f}-{end:.1f} s"


def drill_table(result: DrillResult) -> list[str]:
    """The drill's figures, its targets and their verdicts, as one markdown table."""
    requests = ", ".join(f"{kind} {n:,}" for kind, n in result.requests.items() if n)
    total = sum(result.requests.values())
    failures = ", ".join(f"{label} x{n:,}" for label, n in result.failures.items()) or "none"
    rows: list[tuple[str, str, str, str]] = [
        ("requests", f"{total:,} ({requests})", "", ""),
        ("failures by status", failures, "", ""),
        (
            "acknowledged writes lost",
            f"{len(result.lost)} of {result.writes_checked:,} checked",
            "",
            "",
        ),
        ("recovery", f"{result.metrics.get('recovery', math.nan):.2f} s", "", ""),
    ]
    for window, kinds in result.windows.items():
        span = _window_span(result, window)
        rows.append((f"reads {window} ({span})", _latency(kinds["reads"]), "", ""))
        rows.append((f"writes and logins {window}", _latency(kinds["writes"]), "", ""))
    for check in result.checks:
        rows.append(
            (
                f"target {check.target.source}".strip(),
                format_value(check.measured, check.target.unit),
                check.target.describe(),
                "pass" if check.passed else "**miss**",
            )
        )
    lines = [
        f"### {result.name}: {result.title}",
        "",
        f"Fault {result.phases.fault:g} s after {result.phases.before:g} s of load, "
        f"{result.phases.after:g} s after it; {result.rate:g} operations/s; "
        f"{result.wall_seconds:.0f} s in all{' (short version)' if result.short else ''}.",
        "",
        "| what | measured | target | result |",
        "|---|---|---|---|",
        *(
            f"| {what} | {measured} | {target} | {verdict} |"
            for what, measured, target, verdict in rows
        ),
    ]
    if result.notes:
        lines += ["", *(f"- {note}" for note in result.notes)]
    if result.lost:
        lines += ["", "Lost writes (first 5):", *(f"- {line}" for line in result.lost[:5])]
    return lines


def summary_table(results: list[DrillResult]) -> list[str]:
    lines = ["| drill | targets met | result |", "|---|---|---|"]
    for result in results:
        met = sum(1 for check in result.checks if check.passed)
        verdict = "pass" if result.passed else "**miss**"
        lines.append(f"| {result.name} | {met} of {len(result.checks)} | {verdict} |")
    return lines


def method() -> str:
    return (
        "Each drill starts a fresh local stack with devstack (MariaDB primary and replica, "
        "Redis, etcd, two auth replicas, one HTTP process with two workers), seeds accounts, "
        "and runs an open-loop mixed load from 127.0.0.2-9: profile reads with tokens, "
        "signups, nickname changes (each read back at once: read-your-writes) and logins (half "
        "of them logged out again). Latency counts from each request's due time. "
        f"bcrypt runs at cost {DRILL_BCRYPT_COST} so logins do not dominate two cores. After "
        "the load every acknowledged write is checked: signups log in, nicknames read back "
        "as last acknowledged, logged-out tokens answer 401. Recovery: from the end of the "
        "fault to the end of the last failed request due since it began."
    )


def write(path: Path, results: list[DrillResult], header: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["# Gatehouse fault drills", "", *header, "", method(), "", "## Summary", ""]
    lines += summary_table(results)
    for result in results:
        lines += ["", *drill_table(result)]
    path.write_text("\n".join(lines) + "\n")
