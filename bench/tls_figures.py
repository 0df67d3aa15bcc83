"""Plaintext against mutual TLS on the auth RPC: how bench.tls_compare names its results, the
side-by-side figures the report takes from them, and the issue's target on them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from statistics import fmean

from bench.bounds import cpu_ms_per_success
from bench.scenarios import ScenarioResult
from bench.targets import TargetCheck

PLAINTEXT_SYSTEM = "gatehouse-plaintext"
MTLS_SYSTEM = "gatehouse-mtls"
READS = "profile-warm-peak"
FIXED_RATE = "profile-warm-fixed"
LOGINS = "login"
# ScenarioResult.notes of each load: counted on its stack's auth replicas over its window.
HANDSHAKES_NOTE = "rpc_tls_handshakes"
CALLS_NOTE = "rpc_calls"
# "Keep reads within 10% of plaintext."
MTLS_READ_SHARE = 0.90
_LOADS = (READS, FIXED_RATE, LOGINS)
_ROUND = re.compile(rf"^({'|'.join(_LOADS)})-r(\d+)$")


def round_scenario(load: str, number: int) -> str:
    """`profile-warm-peak-r1`: the load of round `number`."""
    return f"{load}-r{number}"


@dataclass(frozen=True)
class Round:
    number: int
    plaintext: ScenarioResult
    mtls: ScenarioResult

    @property
    def ratio(self) -> float | None:
        plain = self.plaintext.summary.goodput
        return self.mtls.summary.goodput / plain if plain else None


@dataclass(frozen=True)
class SideBySide:
    """One load (reads or logins) under one server, every round run against both stacks."""

    server: str
    load: str
    rounds: list[Round]

    @property
    def plaintext_rate(self) -> float:
        """2xx/s, the mean over the rounds (each as long as the others)."""
        return fmean(r.plaintext.summary.goodput for r in self.rounds)

    @property
    def mtls_rate(self) -> float:
        return fmean(r.mtls.summary.goodput for r in self.rounds)

    @property
    def ratio(self) -> float | None:
        return self.mtls_rate / self.plaintext_rate if self.plaintext_rate else None

    def mtls_note(self, note: str) -> float:
        return sum(r.mtls.notes.get(note, 0.0) for r in self.rounds)

    def cpu_ms(self, system: str) -> float | None:
        """CPU ms per 2xx of one stack over every round, or None when not measured."""
        costs = [
            cpu_ms_per_success(r.plaintext if system == PLAINTEXT_SYSTEM else r.mtls)
            for r in self.rounds
        ]
        known = [c for c in costs if c is not None]
        return fmean(known) if known and len(known) == len(costs) else None


def side_by_side(results: list[ScenarioResult]) -> list[SideBySide]:
    """Every load of the comparison, reads before logins; rounds one stack lacks are left out."""
    found: dict[tuple[str, str, int], dict[str, ScenarioResult]] = {}
    for result in results:
        matched = _ROUND.match(result.scenario)
        if result.system in (PLAINTEXT_SYSTEM, MTLS_SYSTEM) and matched:
            key = (result.server, matched.group(1), int(matched.group(2)))
            found.setdefault(key, {})[result.system] = result
    comparisons = []
    for server in sorted({server for server, _, _ in found}):
        for load in _LOADS:
            rounds = [
                Round(number, pair[PLAINTEXT_SYSTEM], pair[MTLS_SYSTEM])
                for (where, which, number), pair in sorted(found.items())
                if (where, which) == (server, load) and len(pair) == 2
            ]
            if rounds:
                comparisons.append(SideBySide(server, load, rounds))
    return comparisons


def check(results: list[ScenarioResult]) -> list[TargetCheck]:
    """The read target; the CPU per read, login and handshake figures reported; per server."""
    checks = []
    for compared in side_by_side(results):
        rounds = f"same run, {len(compared.rounds)} alternated round(s)"
        if compared.load == READS:
            ratio = compared.ratio
            checks.append(TargetCheck(
                compared.server, "mTLS reads >= 0.90x plaintext",
                f"mTLS {compared.mtls_rate:,.0f} 2xx/s",
                f"plaintext {compared.plaintext_rate:,.0f} 2xx/s ({rounds})",
                ratio, ratio is not None and ratio >= MTLS_READ_SHARE,
            ))  # fmt: skip
        elif compared.load == FIXED_RATE:
            plain, mtls = compared.cpu_ms(PLAINTEXT_SYSTEM), compared.cpu_ms(MTLS_SYSTEM)
            if plain and mtls is not None:
                checks.append(TargetCheck(
                    compared.server, "CPU per read at a fixed rate, mTLS vs plaintext (reported)",
                    f"mTLS {mtls:.3f} ms per 2xx", f"plaintext {plain:.3f} ms per 2xx ({rounds})",
                    mtls / plain, None, lower_is_better=True,
                ))  # fmt: skip
        else:
            checks.append(TargetCheck(
                compared.server, "mTLS logins vs plaintext (reported)",
                f"mTLS {compared.mtls_rate:,.1f} ok/s",
                f"plaintext {compared.plaintext_rate:,.1f} ok/s ({rounds})",
                compared.ratio, None,
            ))  # fmt: skip
        checks.append(TargetCheck(
            compared.server, f"RPC TLS handshakes during the mTLS {compared.load} loads (reported)",
            f"{compared.mtls_note(HANDSHAKES_NOTE):,.0f} handshakes for "
            f"{compared.mtls_note(CALLS_NOTE):,.0f} calls",
            "pooled connections: handshakes are rare", None, None,
        ))  # fmt: skip
    return checks
