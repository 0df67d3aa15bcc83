"""`report.md` with its tables, the PNG plots beside it, and `results.json` with every figure."""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

from bench import bounds, tls_figures
from bench.ceilings import BcryptCeiling
from bench.scenarios import ScenarioResult
from bench.targets import TargetCheck

_MB = 2**20


@dataclass
class RunFacts:
    """What a reader needs to judge the numbers: when, where, how."""

    started: str
    wall_seconds: float
    machine: str
    commit: str
    options: str
    load_cpu: int | None
    generator_ceiling: float | None
    bcrypt: BcryptCeiling | None
    notes: list[str] = field(default_factory=list)
    hpa: list[dict[str, float]] = field(default_factory=list)  # remote runs with a kubeconfig


def _bounds_pointer(checks: list[TargetCheck]) -> list[str]:
    """Where a missed target is explained in depth: profiling takes a person, not a harness run."""
    if all(check.passed is not False for check in checks):
        return []
    return [
        "What bounds each missed figure, with profile evidence and what would move it: "
        "[docs/performance.md](../../../docs/performance.md).",
        "",
    ]


def write(
    run_dir: Path, facts: RunFacts, results: list[ScenarioResult], checks: list[TargetCheck]
) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    plots = _plot_latency(run_dir, results) + _plot_throughput(run_dir, results)
    if facts.hpa:
        plots.append(_plot_hpa(run_dir, facts.hpa, results))
    lines = [
        "# Gatehouse benchmark",
        "",
        f"Run {facts.started}, {facts.wall_seconds / 60:.1f} min, commit `{facts.commit}`, on {facts.machine}.",
        f"Options: `{facts.options}`.",
        "",
        _method(facts),
        "",
        "## Summary",
        "",
        *_summary_table(checks),
        "",
        *_bounds_pointer(checks),
        *bounds.explain(
            {r.key: r for r in results},
            checks,
            len(_cpus()),
            facts.bcrypt.verify_seconds if facts.bcrypt else None,
        ),
        "## Ceilings measured in this run",
        "",
        *_ceilings(facts),
        "",
        *_tls_section(results),
        "## Scenarios",
        "",
        (
            "Latency of open-loop loads counts from each request's scheduled send time. Errors list "
            "non-2xx answers by status, then timeouts and broken connections. *Outside CPU* is busy "
            "CPU time of processes this run did not start (other work on the machine): large values "
            "mean the figures are depressed by a noisy neighbour."
        ),
        "",
        *_scenario_table(results),
        "",
        *_cold_by_size(results),
        "## Where the CPU went",
        "",
        "Share of the machine's CPU time during each scenario (100% = every core busy).",
        "",
        *_cpu_table(results),
        "",
        "## CPU seconds and peak RSS per process",
        "",
        *_process_tables(results),
        "",
        "## Plots",
        "",
        *[f"![{name}]({name})" for name in plots],
        "",
    ]
    if facts.notes:
        lines[lines.index("## Summary") : lines.index("## Summary")] = [
            "## Notes",
            "",
            *[f"- {note}" for note in facts.notes],
            "",
        ]
    report = run_dir / "report.md"
    report.write_text("\n".join(lines))
    (run_dir / "results.json").write_text(
        json.dumps(
            {
                "facts": asdict(facts),
                "checks": [asdict(c) for c in checks],
                "results": [r.to_json() for r in results],
            },
            indent=1,
            default=str,
        )
    )
    return report


def _method(facts: RunFacts) -> str:
    pinned = (
        f"wrk and the open-loop generator run pinned to CPU {facts.load_cpu} (taskset); the "
        "systems under test float over every core, so the load generators take CPU from them "
        "as they would from any co-located process."
        if facts.load_cpu is not None
        else "Only one CPU is usable: the load generators share it with the systems under test."
    )
    return (
        "Everything runs on this machine: MariaDB primary + replica, Redis, etcd, two auth "
        "replicas (each hashing passwords on its share of the CPUs) and one HTTP process with 2 "
        "workers, the auth RPC over mutual TLS (as `make run`), the references, a plaintext "
        "Gatehouse for the cost of TLS, and the load. Closed-loop peaks come from wrk "
        "(1 s segments; logins, signups, the mix and the login storm as one run each), latency "
        f"under a fixed arrival rate from `bench.loadgen`. {pinned}"
    )


def _fmt_ms(seconds: float) -> str:
    return "-" if seconds is None or math.isnan(seconds) else f"{seconds * 1000:.1f}"


def shown_ratio(ratio: float, lower_is_better: bool) -> str:
    """The ratio to two decimals, rounded towards missing the target, so that a miss by a hair
    (0.8499 of a 0.85 bound) never reads as the bound itself."""
    scaled = round(ratio * 100, 6)  # 0.29 * 100 is 28.999999999999996
    hundredths = math.ceil(scaled) if lower_is_better else math.floor(scaled)
    return f"{hundredths / 100:.2f}"


def _summary_table(checks: list[TargetCheck]) -> list[str]:
    rows = [
        "| server | target | measured | reference | ratio | result |",
        "|---|---|---|---|---|---|",
    ]
    for c in checks:
        verdict = {True: "pass", False: "**miss**", None: "reported"}[c.passed]
        ratio = "-" if c.ratio is None else shown_ratio(c.ratio, c.lower_is_better)
        rows.append(
            f"| {c.server} | {c.target} | {c.measured} | {c.reference} | {ratio} | {verdict} |"
        )
    return rows


def _ceilings(facts: RunFacts) -> list[str]:
    lines = []
    if facts.bcrypt is not None:
        b = facts.bcrypt
        lines.append(
            f"- bcrypt at cost {b.cost}: one verify takes {b.verify_seconds * 1000:.1f} ms on one "
            f"core; {b.cpus} usable CPUs give a ceiling of **{b.per_second:,.1f} verifies/s**. "
            "Each login and signup run is held to the ceiling measured again right before and "
            "after it (its row's reference), and reported against bcrypt alone with every CPU "
            "verifying at once, measured there too: the gap between that and the ceiling is the "
            "machine's (the stack at rest, cores sharing caches and clocks), the rest the "
            "requests'."
        )
    if facts.generator_ceiling is not None:
        lines.append(
            f"- The open-loop generator completes at most **{facts.generator_ceiling:,.0f} req/s** "
            "on its core against a server that does no work (`bench.sink`): offered rates well "
            "below that are generated on time."
        )
    return lines


def _scenario_table(results: list[ScenarioResult]) -> list[str]:
    rows = [
        (
            "| system | server | scenario | tool | conns | offered req/s | achieved req/s | 2xx/s "
            "| p50 ms | p90 ms | p99 ms | max ms | errors | outside CPU s |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        s = r.summary
        offered = "closed" if r.offered_rate is None else f"{r.offered_rate:,.0f}"
        errors = ", ".join(f"{k}: {v}" for k, v in s.errors.items()) or "-"
        extra = "".join(
            f"; {k} {v:g}" for k, v in r.notes.items() if k in ("lost_signups", "cold_reused")
        )
        outside = f"{r.usage.outside_cpu_seconds:.1f}" if r.usage else "-"
        rows.append(
            f"| {r.system} | {r.server} | {r.scenario} | {r.tool} | {r.connections} | {offered} "
            f"| {s.rate:,.0f} | {s.goodput:,.0f} | {_fmt_ms(s.p50)} | {_fmt_ms(s.p90)} "
            f"| {_fmt_ms(s.p99)} | {_fmt_ms(s.max)} | {errors}{extra} | {outside} |"
        )
    return rows


def _tls_section(results: list[ScenarioResult]) -> list[str]:
    compared = tls_figures.side_by_side(results)
    if not compared:
        return []
    lines = [
        "## Mutual TLS on the auth RPC against plaintext",
        "",
        (
            "Two Gatehouse stacks on the same stores, at once: the one every other scenario ran "
            "against (`GATEHOUSE_RPC_TLS=mtls`, as `make run`) and a plaintext one, each with two "
            "auth replicas and one HTTP process. The same requests alternate between them: "
            "odd rounds load the plaintext stack first, even rounds the mTLS one. *CPU per 2xx*: "
            "the stack's processes and Redis. Handshakes and calls: the mTLS stack's auth "
            "replicas over the load, its warm-up included."
        ),
        "",
        (
            "| server | load | round | plaintext 2xx/s | mTLS 2xx/s | mTLS / plaintext "
            "| CPU ms per 2xx, plaintext | CPU ms per 2xx, mTLS | TLS handshakes / RPC calls |"
        ),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in compared:
        for r in c.rounds:
            lines.append(
                f"| {c.server} | {c.load} | {r.number} | {r.plaintext.summary.goodput:,.1f} "
                f"| {r.mtls.summary.goodput:,.1f} | {_ratio_cell(r.ratio)} "
                f"| {_cpu_cell(bounds.cpu_ms_per_success(r.plaintext))} "
                f"| {_cpu_cell(bounds.cpu_ms_per_success(r.mtls))} "
                f"| {_handshakes_cell(r.mtls.notes)} |"
            )
        lines.append(
            f"| {c.server} | {c.load} | **mean** | {c.plaintext_rate:,.1f} | {c.mtls_rate:,.1f} "
            f"| **{_ratio_cell(c.ratio)}** | {_cpu_cell(c.cpu_ms(tls_figures.PLAINTEXT_SYSTEM))} "
            f"| {_cpu_cell(c.cpu_ms(tls_figures.MTLS_SYSTEM))} "
            f"| {c.mtls_note(tls_figures.HANDSHAKES_NOTE):,.0f} / "
            f"{c.mtls_note(tls_figures.CALLS_NOTE):,.0f} |"
        )
    return [*lines, ""]


def _ratio_cell(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.3f}"


def _cpu_cell(ms: float | None) -> str:
    return "-" if ms is None else f"{ms:.2f}"


def _handshakes_cell(notes: dict[str, float]) -> str:
    if tls_figures.HANDSHAKES_NOTE not in notes:
        return "-"
    return (
        f"{notes[tls_figures.HANDSHAKES_NOTE]:,.0f} / {notes.get(tls_figures.CALLS_NOTE, 0):,.0f}"
    )


def _cold_by_size(results: list[ScenarioResult]) -> list[str]:
    cold = [r for r in results if r.scenario.startswith("profile-cold-") and r.tool == "loadgen"]
    if not cold:
        return []
    rows = [
        "### Cold-cache reads by table size",
        "",
        (
            "Open loop at the same rate on every table size; each request reads a session nobody read "
            "before, for a user picked at random across the table."
        ),
        "",
        "| system | server | users | offered req/s | p50 ms | p99 ms | max ms | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in cold:
        users = r.scenario.removeprefix("profile-cold-").removesuffix("-open")
        s = r.summary
        errors = ", ".join(f"{k}: {v}" for k, v in s.errors.items()) or "-"
        rows.append(
            f"| {r.system} | {r.server} | {users} | {r.offered_rate:,.0f} | {_fmt_ms(s.p50)} "
            f"| {_fmt_ms(s.p99)} | {_fmt_ms(s.max)} | {errors} |"
        )
    return [*rows, ""]


def _cpu_table(results: list[ScenarioResult]) -> list[str]:
    groups = sorted({bounds.group(p.name) for r in results if r.usage for p in r.usage.processes})
    columns = [*groups, "load generators", "harness", "host", "outside", "idle"]
    rows = [
        "| system | server | scenario | " + " | ".join(columns) + " |",
        "|---|---|---|" + "---|" * len(columns),
    ]
    for r in results:
        if r.usage is None or r.usage.seconds <= 0:
            continue
        shares = bounds.cpu_shares(r, len(_cpus()))
        cells = " | ".join(f"{100 * shares[c]:.0f}%" if shares.get(c) else "-" for c in columns)
        rows.append(f"| {r.system} | {r.server} | {r.scenario} | {cells} |")
    return rows


def _cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def _process_tables(results: list[ScenarioResult]) -> list[str]:
    lines: list[str] = []
    by_system: dict[tuple[str, str], list[ScenarioResult]] = defaultdict(list)
    for r in results:
        if r.usage is not None:
            by_system[(r.system, r.server)].append(r)
    for (system, server), runs in by_system.items():
        names = sorted(
            {
                p.name
                for r in runs
                if r.usage is not None
                for p in r.usage.processes
                if _is_system_process(system, p.name)
            }
        )
        if not names:
            continue
        lines += [
            f"### {system} under {server}: CPU s / peak RSS MB",
            "",
            "| scenario | " + " | ".join(names) + " |",
            "|---|" + "---|" * len(names),
        ]
        for r in runs:
            if r.usage is None:  # runs holds only results with usage (above)
                continue
            usage = {p.name: p for p in r.usage.processes}
            cells = [
                f"{usage[n].cpu_seconds:.1f} / {usage[n].peak_rss_bytes / _MB:.0f}"
                if n in usage
                else "-"
                for n in names
            ]
            lines.append(f"| {r.scenario} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def _is_system_process(system: str, name: str) -> bool:
    if system.startswith("gatehouse"):
        return name.startswith(("auth-", "http-"))
    return name.startswith(system)


def _plot_latency(run_dir: Path, results: list[ScenarioResult]) -> list[str]:
    names = []
    by_system: dict[tuple[str, str], list[ScenarioResult]] = defaultdict(list)
    for r in results:
        by_system[(r.system, r.server)].append(r)
    for (system, server), runs in by_system.items():
        columns = 3
        rows = math.ceil(len(runs) / columns)
        figure, axes = plt.subplots(rows, columns, figsize=(15, 3.2 * rows), squeeze=False)
        for axis, r in zip(axes.flat, runs, strict=False):
            times = [
                i * (r.summary.series[0].seconds if r.summary.series else 1)
                for i in range(len(r.summary.series))
            ]
            for percent, style in ((50, "-"), (90, "--"), (99, "-.")):
                axis.plot(
                    times,
                    [s.percentile(percent) * 1000 for s in r.summary.series],
                    style,
                    marker=".",
                    label=f"p{percent}",
                )
            axis.plot(times, [s.max_latency * 1000 for s in r.summary.series], ":", label="max")
            axis.set_yscale("log")
            axis.set_title(f"{r.scenario} ({r.tool})", fontsize=9)
            axis.set_xlabel("s")
            axis.set_ylabel("latency ms")
            twin = axis.twinx()
            twin.plot(times, [s.count / s.seconds if s.seconds else 0 for s in r.summary.series],
                      color="grey", alpha=0.4, label="req/s")  # fmt: skip
            twin.set_ylabel("req/s", color="grey")
            twin.set_ylim(bottom=0)
            axis.legend(fontsize=7, loc="upper left")
        for axis in list(axes.flat)[len(runs) :]:
            axis.set_visible(False)
        figure.suptitle(f"{system} under {server}: latency percentiles per second (grey: req/s)")
        figure.tight_layout()
        name = f"latency-{system}-{server}.png"
        figure.savefig(run_dir / name, dpi=80)
        plt.close(figure)
        names.append(name)
    return names


def _plot_throughput(run_dir: Path, results: list[ScenarioResult]) -> list[str]:
    closed = [r for r in results if r.tool == "wrk" and r.system != "loadgen"]
    if not closed:
        return []
    in_run_order = [r.scenario for r in closed]
    scenarios = sorted(set(in_run_order), key=in_run_order.index)
    series = sorted({(r.system, r.server) for r in closed})
    figure, axis = plt.subplots(figsize=(max(8, 1.6 * len(scenarios)), 4.5))
    width = 0.8 / len(series)
    for i, (system, server) in enumerate(series):
        values = [
            next(
                (
                    r.summary.goodput
                    for r in closed
                    if (r.system, r.server, r.scenario) == (system, server, s)
                ),
                0,
            )
            for s in scenarios
        ]
        axis.bar(
            [x + i * width for x in range(len(scenarios))],
            values,
            width,
            label=f"{system} ({server})",
        )
    axis.set_xticks(
        [x + width * (len(series) - 1) / 2 for x in range(len(scenarios))],
        scenarios,
        rotation=20,
        fontsize=8,
    )
    axis.set_ylabel("2xx req/s (closed loop, wrk)")
    axis.set_yscale("log")
    axis.legend(fontsize=8)
    axis.set_title("Throughput against the references")
    figure.tight_layout()
    name = "throughput.png"
    figure.savefig(run_dir / name, dpi=80)
    plt.close(figure)
    return [name]


def _plot_hpa(run_dir: Path, samples: list[dict[str, float]], results: list[ScenarioResult]) -> str:
    figure, axis = plt.subplots(figsize=(10, 4))
    start = samples[0]["time"]
    times = [s["time"] - start for s in samples]
    axis.step(times, [s["desired"] for s in samples], where="post", label="desired replicas")
    axis.step(times, [s["current"] for s in samples], where="post", label="current replicas")
    axis.set_xlabel("s since the first sample")
    axis.set_ylabel("replicas")
    axis.legend(loc="upper left")
    load = axis.twinx()
    for r in results:
        step = r.summary.series[0].seconds if r.summary.series else 1.0
        load.plot([r.started_at - start + i * step for i in range(len(r.summary.series))],
                  [s.count / s.seconds if s.seconds else 0 for s in r.summary.series],
                  color="grey", alpha=0.5)  # fmt: skip
    load.set_ylabel("req/s (grey)", color="grey")
    figure.suptitle("HPA replicas next to the load")
    figure.tight_layout()
    name = "hpa.png"
    figure.savefig(run_dir / name, dpi=80)
    plt.close(figure)
    return name
