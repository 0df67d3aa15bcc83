"""The scenarios of the issue, as run against each system. The scenarios are the contract:
their shapes (rates, connection counts, mixes) come from the issue, never from the code."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from bench.api import Api
from bench.ceilings import BcryptCeiling, bcrypt_ceiling, bcrypt_on_every_cpu
from bench.credentials import distinct_users
from bench.scenarios import Runner, ScenarioResult
from bench.seed import ours_database, peer_database, peer_email, username
from bench.systems import Endpoint
from bench.wrk import WrkRun, write_requests
from devstack.ports import wait_until
from devstack.stack import DataStores

# The login storm runs this much longer than the reads it surrounds (start-up of the reads'
# generator and its connections included).
STORM_MARGIN_SECONDS = 3

# Notes of a login or signup run: the bcrypt ceiling (verifies/s) measured right before and
# right after it, each once the machine was idle.
CEILING_BEFORE, CEILING_AFTER = "bcrypt_per_s_before", "bcrypt_per_s_after"
# The same, with every usable CPU verifying at once (reported beside the target).
ALL_CPUS_BEFORE, ALL_CPUS_AFTER = "bcrypt_all_cpus_per_s_before", "bcrypt_all_cpus_per_s_after"

# Scenario names of the closed loops, followed by their connection count.
CLOSED_LOOP_PREFIX = "profile-warm-closed-"

# Mints `count` fresh sessions (tokens) for the given seeded users of a table size.
TokenMinter = Callable[[int, list[int]], list[str]]


@dataclass(frozen=True)
class Plan:
    seconds: int = 8  # measured time of every scenario
    warmup_seconds: int = 2
    peak_connections: int = 64
    hash_connections: int = 32  # logins and signups: enough to keep every hashing thread busy
    # Longest wait for the machine to go idle before a login or signup run (Runner.settle).
    settle_seconds: float = 20.0
    storm_connections: int = 64
    thousand_connections: int = 1000  # "1000 connections each sending about one request a second"
    thousand_rate: float = 1000.0
    seventy_connections: int = 256
    storm_read_rate: float = 200.0
    storm_read_connections: int = 50
    overload_factor: float = 2.0
    # Closed loops wider than a worker's concurrency: they must get latency, never refusals.
    closed_loop_connections: tuple[int, ...] = (128, 512)
    closed_loop_seconds: int = 15
    overload_connections: int = 1000
    cold_open_rate: float = 400.0  # the same on every table size
    cold_open_connections: int = 200
    warm_users: int = 1000
    login_users: int = 1000
    mix_requests: int = 20_000  # a shuffled deck cycled by wrk: 90% reads, 9% logins, 1% signups
    # Plaintext against mTLS: each load this many times per stack, alternated. Reads take
    # seconds, so more rounds of them average out more of a shared machine's swings.
    tls_read_rounds: int = 4
    tls_login_rounds: int = 2
    # Far below either stack's peak even on a busy machine: the CPU each read costs, not a rate.
    tls_fixed_rate: float = 100.0
    tls_fixed_connections: int = 10

    @classmethod
    def smoke(cls) -> Plan:
        """Seconds, not minutes: every scenario once, at toy sizes."""
        return cls(
            seconds=1, warmup_seconds=0, peak_connections=8, hash_connections=4,
            storm_connections=8, thousand_connections=50, thousand_rate=100.0,
            seventy_connections=20, storm_read_rate=50.0, storm_read_connections=10,
            overload_connections=50, cold_open_rate=50.0, cold_open_connections=10,
            closed_loop_connections=(16, 64), closed_loop_seconds=1,
            warm_users=20, login_users=20, mix_requests=5000, tls_read_rounds=1,
            tls_login_rounds=1, tls_fixed_rate=20.0, tls_fixed_connections=4, settle_seconds=0.5,
        )  # fmt: skip


def run_tag() -> str:
    """A short unique prefix for this run's new usernames (3 to 30 chars with the counter)."""
    return f"s{int(time.time()) % 10**8:08d}"


@dataclass
class Target:
    """One system under one server, and how to reach and seed-match it."""

    system: str
    server: str
    endpoint: Endpoint
    api: Api
    users: int  # seeded table size it serves
    mint: TokenMinter  # for its own table sizes
    count_rows: Callable[[str], int] | None = None  # accounts whose name starts with a prefix
    login_names: list[str] | None = None  # accounts to log in; default: seeded users


class Suite:
    def __init__(self, runner: Runner, plan: Plan, bcrypt: BcryptCeiling, password: str) -> None:
        self.runner = runner
        self.plan = plan
        self.bcrypt = bcrypt
        self.password = password
        self.results: list[ScenarioResult] = []

    def _keep(self, result: ScenarioResult) -> ScenarioResult:
        self.results.append(result)
        return result

    def _host(self, target: Target) -> str:
        return f"{target.endpoint.host}:{target.endpoint.port}"

    # reads

    def warm_peak(
        self, target: Target, tokens: list[str], scenario: str = "profile-warm-peak"
    ) -> ScenarioResult:
        requests = [target.api.profile(self._host(target), token) for token in tokens]
        result, _ = self.runner.closed(
            target.system, target.server, scenario, target.endpoint, requests,
            connections=self.plan.peak_connections, seconds=self.plan.seconds,
            warmup_seconds=self.plan.warmup_seconds,
        )  # fmt: skip
        return self._keep(result)

    def closed_loops(self, target: Target, tokens: list[str]) -> None:
        """Each connection sends its next read when it has its answer, in one wrk run per size
        (no 1 s segments: every segment would start with all connections sending at once)."""
        requests = [target.api.profile(self._host(target), token) for token in tokens]
        for connections in self.plan.closed_loop_connections:
            result, _ = self.runner.closed(
                target.system, target.server, f"{CLOSED_LOOP_PREFIX}{connections}", target.endpoint,
                requests, connections=connections, seconds=self.plan.closed_loop_seconds, whole=True,
            )  # fmt: skip
            self._keep(result)

    def warm_open(self, target: Target, tokens: list[str], peak: float) -> None:
        requests = [target.api.profile(self._host(target), token) for token in tokens]
        p = self.plan
        for scenario, rate, connections in (
            ("profile-warm-1000conn", p.thousand_rate, p.thousand_connections),
            ("profile-warm-70pct", 0.7 * peak, p.seventy_connections),
        ):
            self._keep(self.runner.open(
                target.system, target.server, scenario, target.endpoint, requests,
                rate=rate, connections=connections, seconds=p.seconds,
            ))  # fmt: skip

    def fixed_rate(self, target: Target, tokens: list[str], scenario: str) -> ScenarioResult:
        """Warm reads at the plan's fixed TLS comparison rate (bench.tls_compare)."""
        requests = [target.api.profile(self._host(target), token) for token in tokens]
        return self._keep(self.runner.open(
            target.system, target.server, scenario, target.endpoint, requests,
            rate=self.plan.tls_fixed_rate, connections=self.plan.tls_fixed_connections,
            seconds=self.plan.seconds,
        ))  # fmt: skip

    def cold(self, target: Target, expected_peak: float, *, peak: bool = True) -> None:
        """Reads of sessions nobody read before, for random users across the table."""
        p = self.plan
        label = f"profile-cold-{target.users}"
        if peak:
            # Enough sessions that wrk never comes back to one (a reuse would be a warm read).
            needed = int(expected_peak * p.seconds * 1.5) + 200
            tokens = target.mint(target.users, distinct_users(target.users, needed))
            requests = [target.api.profile(self._host(target), t) for t in tokens]
            result, run = self.runner.closed(
                target.system, target.server, f"{label}-peak", target.endpoint, requests,
                connections=p.peak_connections, seconds=p.seconds,
            )  # fmt: skip
            result.notes["cold_reused"] = max(0, run.cursor - len(requests))
            self._keep(result)
        needed = int(p.cold_open_rate * p.seconds) + 100
        tokens = target.mint(target.users, distinct_users(target.users, needed))
        self._keep(self.runner.open(
            target.system, target.server, f"{label}-open", target.endpoint,
            [target.api.profile(self._host(target), t) for t in tokens],
            rate=p.cold_open_rate, connections=p.cold_open_connections, seconds=p.seconds,
        ))  # fmt: skip

    def overload(self, target: Target, tokens: list[str], peak: float) -> None:
        requests = [target.api.profile(self._host(target), token) for token in tokens]
        self._keep(self.runner.open(
            target.system, target.server, "overload", target.endpoint, requests,
            rate=self.plan.overload_factor * peak, connections=self.plan.overload_connections,
            seconds=self.plan.seconds,
        ))  # fmt: skip

    # password hashing

    def login_requests(self, target: Target) -> list[str]:
        names = target.login_names or [
            username(i) for i in distinct_users(target.users, self.plan.login_users)
        ]
        return [target.api.login(self._host(target), name, self.password) for name in names]

    def login(self, target: Target, scenario: str = "login") -> ScenarioResult:
        return self._keep(self._hashing_run(target, scenario, self.login_requests(target)))

    def _hashing_run(self, target: Target, scenario: str, requests: list[str]) -> ScenarioResult:
        """A login or signup run, between two measures of the bcrypt ceiling taken once the
        machine is idle: the host's speed moves by more than the targets' margins between the
        run's start and this scenario, so its ratio takes the ceiling measured beside it."""
        self.runner.settle(f"{target.system} {scenario}", self.plan.settle_seconds)
        before = bcrypt_ceiling(self.bcrypt.cost)
        all_cpus_before = bcrypt_on_every_cpu(self.bcrypt.cost)
        result, _ = self.runner.closed(
            target.system, target.server, scenario, target.endpoint, requests,
            connections=self.plan.hash_connections, seconds=self.plan.seconds, whole=True,
        )  # fmt: skip
        # The abandoned requests still hash for a while: a verify timed among them reads slow.
        self.runner.settle(f"the bcrypt ceiling after {scenario}", self.plan.settle_seconds)
        after = bcrypt_ceiling(self.bcrypt.cost)
        all_cpus_after = bcrypt_on_every_cpu(self.bcrypt.cost)
        result.notes[CEILING_BEFORE] = before.per_second
        result.notes[CEILING_AFTER] = after.per_second
        result.notes[ALL_CPUS_BEFORE] = all_cpus_before
        result.notes[ALL_CPUS_AFTER] = all_cpus_after
        return result

    def signup(self, target: Target) -> None:
        prefix = run_tag() + "x"
        count = int(self.bcrypt.per_second * self.plan.seconds * 3) + 200
        requests = [
            target.api.signup(self._host(target), f"{prefix}{i:07d}", self.password)
            for i in range(count)
        ]
        result = self._hashing_run(target, "signup", requests)
        acknowledged = result.summary.statuses.get(201, 0) + result.summary.statuses.get(200, 0)
        if target.count_rows is not None:
            rows = target.count_rows(prefix)
            result.notes["acknowledged"] = acknowledged
            result.notes["rows"] = rows
            result.notes["lost_signups"] = max(0, acknowledged - rows)
        self._keep(result)

    def mix(self, target: Target, tokens: list[str]) -> None:
        """90% profile reads, 9% logins, 1% signups, shuffled (the same deck for every system)."""
        host = self._host(target)
        deck_random = random.Random(5)
        logins = self.login_requests(target)
        prefix = run_tag() + "m"
        requests = []
        for i in range(self.plan.mix_requests):
            roll = deck_random.random()
            if roll < 0.90:
                requests.append(target.api.profile(host, tokens[i % len(tokens)]))
            elif roll < 0.99:
                requests.append(logins[i % len(logins)])
            else:
                requests.append(target.api.signup(host, f"{prefix}{i:07d}", self.password))
        result, _ = self.runner.closed(
            target.system, target.server, "mix", target.endpoint, requests,
            connections=self.plan.peak_connections, seconds=self.plan.seconds, whole=True,
        )  # fmt: skip
        self._keep(result)

    def storm(self, target: Target, tokens: list[str]) -> None:
        """Reads at a fixed rate alone, then while logins saturate password hashing."""
        p = self.plan
        reads = [target.api.profile(self._host(target), t) for t in tokens]
        self._keep(self.runner.open(
            target.system, target.server, "storm-baseline", target.endpoint, reads,
            rate=p.storm_read_rate, connections=p.storm_read_connections, seconds=p.seconds,
        ))  # fmt: skip
        # One uninterrupted wrk: restarting it every second would drop every login in flight
        # and resend a burst of new ones, which is not a storm's steady state (side by side,
        # 1 s segments gave the reads two to three times the p99 of one continuous run).
        # wrk sends a login on every connection at once, so its first answer means the hashing
        # queue is full; the reads start then, and the storm outlasts them by a margin.
        marker = self.runner.work_dir / "storm.answered"
        marker.unlink(missing_ok=True)
        storm = WrkRun(
            target.endpoint.url + "/",
            write_requests(self.runner.work_dir / "storm.requests", self.login_requests(target)),
            p.storm_connections,
            cpu=self.runner.cpu,
            answered_marker=marker,
        )
        storm_seconds = p.seconds + STORM_MARGIN_SECONDS
        thread = threading.Thread(
            target=storm.run,
            args=(storm_seconds,),
            kwargs={"segment_seconds": storm_seconds},
            daemon=True,
        )
        thread.start()
        wait_until(marker.exists, 30.0, "the login storm's first answer")
        result = self.runner.open(
            target.system, target.server, "storm", target.endpoint, reads,
            rate=p.storm_read_rate, connections=p.storm_read_connections, seconds=p.seconds,
        )  # fmt: skip
        # The reads must not outlast the storm, or part of them ran without it.
        result.notes["storm_ended_early"] = int(not thread.is_alive())
        thread.join()
        logins = sum(s.successes for s in storm.segments)
        result.notes["storm_logins_per_s"] = logins / max(
            1e-9, sum(s.seconds for s in storm.segments)
        )
        self._keep(result)


def gatehouse_rows(stores: DataStores, users: int) -> Callable[[str], int]:
    def count(prefix: str) -> int:
        rows = stores.primary.execute(
            f"SELECT COUNT(*) AS n FROM `{ours_database(users)}`.users WHERE username LIKE %s",
            (prefix + "%",),
        )
        return int(rows[0]["n"])

    return count


def peer_rows(stores: DataStores, users: int) -> Callable[[str], int]:
    def count(prefix: str) -> int:
        rows = stores.primary.execute(
            f"SELECT COUNT(*) AS n FROM `{peer_database(users)}`.`user` WHERE email LIKE %s",
            (peer_email(prefix).split("@")[0] + "%",),
        )
        return int(rows[0]["n"])

    return count
