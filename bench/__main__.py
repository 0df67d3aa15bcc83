"""`make bench` / `python -m bench`: load Gatehouse and its references, write the report.

Locally (the default) it starts the stack `make run` starts (the auth RPC over mutual TLS), on
seeded users (cached between runs), measures the bcrypt and load-generator ceilings, runs every
scenario under Granian and under Hypercorn against Gatehouse, the bare Starlette endpoint and
fastapi-users, then the warm-read peak and the logins alternated between that stack and a
plaintext one (the cost of TLS), and writes bench/results/<timestamp>/report.md with its plots
(and refreshes bench/results/latest).
With --base-url it loads a deployed Gatehouse instead (a cluster's ingress) and, given a
kubeconfig, records the HPA's replicas next to the load.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from bench import report, targets, tls_figures
from bench.api import BARE, GATEHOUSE, PEER
from bench.bounds import load_notes
from bench.ceilings import bcrypt_ceiling, generator_ceiling
from bench.credentials import distinct_users, gatehouse_tokens, peer_tokens
from bench.procstats import ProcessWatch
from bench.reference.venv import reference_python
from bench.remote import prepare_accounts
from bench.scenarios import Runner, ScenarioResult
from bench.seed import SeedCache, SeedManifest, open_seeded_stores
from bench.suites import Plan, Suite, Target, gatehouse_rows, peer_rows
from bench.systems import (
    REPO_ROOT,
    SERVERS,
    Endpoint,
    GatehouseUnderTest,
    ReferenceServer,
    bare_server,
    new_jwt_secret,
    peer_server,
)
from bench.targets import DESIGN_SIZE, SMALL_SIZE
from bench.tls_compare import compare_rpc_tls
from bench.tls_figures import MTLS_SYSTEM, PLAINTEXT_SYSTEM
from devstack.stack import DataStores
from services.auth.settings import AuthSettings

RESULTS = REPO_ROOT / "bench" / "results"
DEFAULT_STATE = REPO_ROOT / ".state" / "bench"
DEFAULT_SIZES = (SMALL_SIZE, 1_000_000)
SMOKE_SIZE = 2_000


def _default_bcrypt_cost() -> int:
    (cost,) = [f.default for f in dataclasses.fields(AuthSettings) if f.name == "bcrypt_cost"]
    if not isinstance(cost, int):
        raise TypeError(f"AuthSettings.bcrypt_cost defaults to {cost!r}, not a number")
    return cost


DEFAULT_COST = _default_bcrypt_cost()


class Progress:
    """One line per step, prefixed with the time since the start."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def __call__(self, line: str) -> None:
        elapsed = int(time.monotonic() - self.started)
        print(f"bench [{elapsed // 60:02d}:{elapsed % 60:02d}] {line}", flush=True)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument(
        "--seconds",
        type=int,
        default=Plan.seconds,
        help="measured seconds per scenario (default %(default)s)",
    )
    parser.add_argument(
        "--servers", default=",".join(SERVERS), help="HTTP servers to compare (default %(default)s)"
    )
    parser.add_argument(
        "--sizes",
        default=",".join(map(str, DEFAULT_SIZES)),
        help="seeded table sizes; the first one serves every scenario, the others the cold reads (default %(default)s)",
    )
    parser.add_argument(
        "--users-10m",
        action="store_true",
        help=f"also seed and measure {DESIGN_SIZE:,} users, the design's count (slow the first time)",
    )
    parser.add_argument(
        "--no-peer", action="store_true", help="skip fastapi-users (no virtualenv is created)"
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help=f"seconds per scenario, {SMOKE_SIZE:,} users, bcrypt cost 4: checks the harness, not the system",
    )
    parser.add_argument(
        "--tls-only",
        action="store_true",
        help="only the warm-read peak and the logins against the mTLS and the plaintext stacks "
        "(the cost of TLS on the auth RPC), under the first server, on the first size",
    )
    parser.add_argument(
        "--out", type=Path, help="report folder (default bench/results/<timestamp>)"
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE,
        help="seed cache and stack state (default %(default)s)",
    )
    parser.add_argument(
        "--peer-venv",
        type=Path,
        default=DEFAULT_STATE / "reference-venv",
        help="fastapi-users' virtualenv, made on first use (default %(default)s)",
    )
    parser.add_argument(
        "--base-url", help="load a deployed Gatehouse at this URL instead of a local stack"
    )
    parser.add_argument(
        "--kubeconfig",
        type=Path,
        help="with --base-url: record the HPA's replicas with this kubeconfig",
    )
    parser.add_argument(
        "--namespace", default="gatehouse", help="the HPA's namespace (default %(default)s)"
    )
    parser.add_argument(
        "--hpa", default="gatehouse-http", help="the HPA's name (default %(default)s)"
    )
    options = parser.parse_args(argv)
    unknown = set(options.servers.split(",")) - set(SERVERS)
    if unknown:
        parser.error(f"unknown servers {sorted(unknown)}; choose from {', '.join(SERVERS)}")
    if options.kubeconfig and not options.base_url:
        parser.error("--kubeconfig goes with --base-url: the HPA belongs to a deployed Gatehouse")
    return options


def main(argv: list[str] | None = None) -> int:
    options = parse(argv)
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)
    missing = [tool for tool in ("wrk", "taskset") if shutil.which(tool) is None]
    if missing:
        print(f"bench: {', '.join(missing)} not found; run `make system-deps`", file=sys.stderr)
        return 2
    progress = Progress()
    started = datetime.now(UTC)
    run_dir: Path = options.out or RESULTS / started.strftime("%Y%m%dT%H%M%SZ")
    (run_dir / "work").mkdir(parents=True, exist_ok=True)
    progress(f"writing to {run_dir}")
    if options.base_url:
        results, facts = run_remote(options, run_dir, progress)
    else:
        results, facts = run_local(options, run_dir, progress)
    facts.wall_seconds = time.monotonic() - progress.started
    facts.started = started.isoformat(timespec="seconds")
    by_key = {r.key: r for r in results}
    servers = sorted({r.server for r in results if r.system == "gatehouse"})
    checks = (
        [c for server in servers for c in targets.check(by_key, server, facts.bcrypt)]
        if facts.bcrypt
        else []
    ) + tls_figures.check(results)
    path = report.write(run_dir, facts, results, checks)
    shutil.rmtree(run_dir / "work", ignore_errors=True)
    if options.out is None and not options.smoke and not options.tls_only:
        latest = RESULTS / "latest"
        shutil.rmtree(latest, ignore_errors=True)
        shutil.copytree(run_dir, latest)
    progress(f"report: {path} ({facts.wall_seconds / 60:.1f} min)")
    missed = [c for c in checks if c.passed is False]
    for c in missed:
        progress(f"missed: {c.server}: {c.target}: {c.measured} (reference {c.reference})")
    return 0


def _facts(options: argparse.Namespace, runner_cpu: int | None) -> report.RunFacts:
    return report.RunFacts(
        started="",
        wall_seconds=0.0,
        machine=_machine(),
        commit=_commit(),
        options=shlex.join(sys.argv[1:]) or "(defaults)",
        load_cpu=runner_cpu,
        generator_ceiling=None,
        bcrypt=None,
    )


def run_local(
    options: argparse.Namespace, run_dir: Path, progress: Progress
) -> tuple[list[ScenarioResult], report.RunFacts]:
    plan = Plan.smoke() if options.smoke else Plan(seconds=options.seconds)
    sizes = [SMOKE_SIZE] if options.smoke else [int(s) for s in options.sizes.split(",")]
    if options.users_10m and DESIGN_SIZE not in sizes:
        sizes.append(DESIGN_SIZE)
    if options.tls_only:
        sizes = sizes[:1]
    servers = options.servers.split(",")
    cost = 4 if options.smoke else DEFAULT_COST
    state: Path = options.state_dir.resolve()
    cache = SeedCache(state, cost)
    stores, manifest = open_seeded_stores(cache, state / "run" / "stores", sizes, progress)
    watch = ProcessWatch()
    for name, process in (
        ("mariadb primary", stores.primary.process),
        ("mariadb replica", stores.replica.process),
        ("redis", stores.redis.process),
        ("etcd", stores.etcd.process),
    ):
        watch.add(name, process.pid)
    watch.start()
    runner = Runner(run_dir / "work", watch, progress)
    facts = _facts(options, runner.cpu)
    gatehouse = GatehouseUnderTest(stores, state / "run" / "gatehouse", manifest, rpc_tls=True)
    try:
        facts.bcrypt = bcrypt_ceiling(cost)
        progress(f"bcrypt ceiling at cost {cost}: {facts.bcrypt.per_second:,.1f} verifies/s")
        facts.generator_ceiling = generator_ceiling(
            runner, run_dir / "work", seconds=2 if options.smoke else 3
        )
        progress(f"open-loop generator ceiling: {facts.generator_ceiling:,.0f} req/s")
        suite = Suite(runner, plan, facts.bcrypt, manifest.password)
        peer_python = (
            None
            if options.no_peer or options.tls_only
            else reference_python(options.peer_venv.resolve(), progress)
        )
        facts.notes += _local_runs(
            suite,
            plan,
            stores,
            manifest,
            gatehouse,
            watch,
            servers,
            sizes,
            peer_python,
            run_dir / "work",
            state / "run" / "gatehouse-plaintext",
            tls_only=options.tls_only,
        )
    finally:
        gatehouse.stop()
        watch.stop()
        stores.stop()
    facts.notes += load_notes(suite.results, len(os.sched_getaffinity(0)))
    return suite.results, facts


def _local_runs(
    suite: Suite, plan: Plan, stores: DataStores, manifest: SeedManifest,
    gatehouse: GatehouseUnderTest, watch: ProcessWatch, servers: list[str], sizes: list[int],
    peer_python: Path | None, logs: Path, plaintext_dir: Path, *, tls_only: bool,
) -> list[str]:  # fmt: skip
    """Every scenario, or with `tls_only` the TLS comparison alone; returns the report's notes."""
    main_size = sizes[0]
    key = gatehouse.secrets.jwt_private_key

    def ours_mint(users: int, indexes: list[int]) -> list[str]:
        return gatehouse_tokens(stores, users, key, indexes)

    peer_secret = new_jwt_secret()

    def peer_mint(users: int, indexes: list[int]) -> list[str]:
        return peer_tokens(peer_secret, indexes)

    gatehouse.serve_database(main_size)
    warm_users = distinct_users(main_size, plan.warm_users)
    warm, peer_warm = ours_mint(main_size, warm_users), peer_mint(main_size, warm_users)
    peaks: dict[str, float] = {}
    for server in [] if tls_only else servers:
        with _watched_gatehouse(watch, gatehouse, server) as endpoint:
            target = Target("gatehouse", server, endpoint, GATEHOUSE, main_size, ours_mint,
                            gatehouse_rows(stores, main_size))  # fmt: skip
            peak = peaks[server] = suite.warm_peak(target, warm).summary.rate
            suite.warm_open(target, warm, peak)
            suite.closed_loops(target, warm)
            suite.cold(target, peak)
            suite.login(target)
            suite.signup(target)
            suite.mix(target, warm)
            suite.storm(target, warm)
            suite.overload(target, warm, peak)
        with _watched(watch, bare_server(server, logs), "/api/v1/me") as endpoint:
            suite.warm_peak(
                Target("starlette", server, endpoint, BARE, main_size, peer_mint), ["-"]
            )
        if peer_python is not None:
            reference = peer_server(
                server, peer_python, stores, main_size, manifest, peer_secret, logs
            )
            with _watched(watch, reference, "/users/me") as endpoint:
                target = Target("fastapi-users", server, endpoint, PEER, main_size, peer_mint,
                                peer_rows(stores, main_size))  # fmt: skip
                peer_peak = suite.warm_peak(target, peer_warm).summary.rate
                suite.cold(target, peer_peak)
                suite.login(target)
                suite.signup(target)
                suite.mix(target, peer_warm)
                suite.overload(target, peer_warm, peer_peak)
    # The cost of TLS on the auth RPC, under the first server, while the replicas serve the
    # first size (their counters then cover every scenario above).
    server = servers[0]
    plaintext = GatehouseUnderTest(stores, plaintext_dir, manifest, rpc_tls=False,
                                   jwt_private_key=key, etcd_prefix="/gatehouse-bench-plaintext/")  # fmt: skip
    try:
        plaintext.serve_database(main_size)
        notes = compare_rpc_tls(
            suite, watch, {PLAINTEXT_SYSTEM: plaintext, MTLS_SYSTEM: gatehouse}, server,
            main_size, ours_mint, warm,
        )  # fmt: skip
    finally:
        plaintext.stop()
    if tls_only:
        return notes
    # Table size: cold reads again on every larger table, under the first server.
    for users in sizes[1:]:
        gatehouse.serve_database(users)
        with _watched_gatehouse(watch, gatehouse, server) as endpoint:
            target = Target("gatehouse", server, endpoint, GATEHOUSE, users, ours_mint)
            suite.cold(target, peaks[server])
        if peer_python is not None:
            reference = peer_server(server, peer_python, stores, users, manifest, peer_secret, logs)
            with _watched(watch, reference, "/users/me") as endpoint:
                suite.cold(
                    Target("fastapi-users", server, endpoint, PEER, users, peer_mint),
                    peaks[server],
                    peak=False,
                )
    return notes


@contextlib.contextmanager
def _watched_gatehouse(
    watch: ProcessWatch, gatehouse: GatehouseUnderTest, server: str
) -> Iterator[Endpoint]:
    endpoint = gatehouse.start_http(server)
    try:
        with watch.watching(gatehouse.processes()):
            yield endpoint
    finally:
        gatehouse.stop_http()


@contextlib.contextmanager
def _watched(watch: ProcessWatch, server: ReferenceServer, probe: str) -> Iterator[Endpoint]:
    endpoint = server.start(probe)
    watch.add(server.process.name, server.process.pid)
    try:
        yield endpoint
    finally:
        watch.remove(server.process.name)
        server.stop()


def run_remote(
    options: argparse.Namespace, run_dir: Path, progress: Progress
) -> tuple[list[ScenarioResult], report.RunFacts]:
    plan = Plan.smoke() if options.smoke else Plan(seconds=options.seconds)
    parts = urlsplit(options.base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SystemExit(f"--base-url must be http(s)://host[:port], not {options.base_url!r}")
    endpoint = Endpoint(
        parts.hostname,
        parts.port or (443 if parts.scheme == "https" else 80),
        parts.scheme == "https",
    )
    watch = ProcessWatch()  # nothing local to watch; the window still measures the load's CPU
    runner = Runner(run_dir / "work", watch, progress)
    facts = _facts(options, runner.cpu)
    facts.notes.append(
        f"Remote run against {options.base_url}: no seeded table, so no cold-cache reads, no "
        "references and no per-process figures; the bcrypt ceiling is this machine's, not the pods'."
    )
    facts.bcrypt = bcrypt_ceiling(DEFAULT_COST)
    recorder = None
    if options.kubeconfig:
        from bench.hpa import HpaRecorder

        recorder = HpaRecorder(options.kubeconfig, options.namespace, options.hpa)
        recorder.start()
    suite = Suite(runner, plan, facts.bcrypt, "bench-remote-password-1")
    try:
        names, tokens = prepare_accounts(
            endpoint, suite.password, min(plan.warm_users, 200), progress
        )
        target = Target(
            "gatehouse",
            "remote",
            endpoint,
            GATEHOUSE,
            len(names),
            lambda _u, _i: [],
            login_names=names,
        )
        peak = suite.warm_peak(target, tokens).summary.rate
        suite.warm_open(target, tokens, peak)
        suite.closed_loops(target, tokens)
        suite.login(target)
        suite.signup(target)
        suite.mix(target, tokens)
        suite.storm(target, tokens)
        suite.overload(target, tokens, peak)
    finally:
        if recorder is not None:
            recorder.stop()
            facts.hpa = recorder.samples
            if recorder.errors:
                facts.notes.append(
                    f"{len(recorder.errors)} HPA samples failed; first: {recorder.errors[0]}"
                )
    return suite.results, facts


def _machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{len(os.sched_getaffinity(0))} CPUs ({model}), {memory:.0f} GiB, {platform.platform()}"


def _commit() -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
                              check=False, capture_output=True, text=True, timeout=10).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
                               check=False, capture_output=True, text=True, timeout=10).stdout.strip()  # fmt: skip
        return head + ("+uncommitted changes" if dirty else "") if head else "unknown"
    return "unknown"


if __name__ == "__main__":
    sys.exit(main())
