"""`make drill` / `python -m drills`: run the fault drills, print and write their tables.

Each drill starts its own local stack (devstack) in the state folder, runs its fault under
bounded mixed load, verifies every acknowledged write and checks the issue's targets. The
tables go to stdout and to drills/results/latest/report.md. Exit code 0 when every target of
every drill held, 1 otherwise.
"""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from drills import report
from drills.faults import BY_NAME, DEFAULT_ETCD_OUTAGE, DRILLS
from drills.runner import DrillResult, run_drill

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "drills" / "results" / "latest" / "report.md"
DEFAULT_STATE = REPO_ROOT / ".state" / "drill"


class Progress:
    """One line per step, prefixed with the time since the start and the drill's name."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.drill = ""

    def __call__(self, line: str) -> None:
        elapsed = int(time.monotonic() - self.started)
        print(f"drill [{elapsed // 60:02d}:{elapsed % 60:02d}] {self.drill}: {line}", flush=True)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m drills", description=__doc__)
    parser.add_argument(
        "--only",
        default="",
        help=f"comma-separated drills to run (default: all of {', '.join(BY_NAME)})",
    )
    parser.add_argument(
        "--short",
        action="store_true",
        help="the short versions `make test` runs (faults of 3-5 s, lower rates)",
    )
    parser.add_argument(
        "--etcd-seconds",
        type=float,
        default=None,
        help=f"length of the etcd outage (default {DEFAULT_ETCD_OUTAGE:g} s, 5 s with --short)",
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="report file (default %(default)s)"
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE,
        help="stack state, wiped per drill (default %(default)s)",
    )
    options = parser.parse_args(argv)
    unknown = [name for name in options.only.split(",") if name and name not in BY_NAME]
    if unknown:
        parser.error(f"unknown drill(s) {', '.join(unknown)}; known: {', '.join(BY_NAME)}")
    return options


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=REPO_ROOT,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip()


def main(argv: list[str] | None = None) -> int:
    options = parse(argv)
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)
    chosen = [BY_NAME[name] for name in options.only.split(",") if name] or list(DRILLS)
    progress = Progress()
    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    commit = _commit()  # now: the code that runs, whatever is committed meanwhile
    results: list[DrillResult] = []
    for number, drill in enumerate(chosen, 1):
        progress.drill = f"{drill.name} ({number}/{len(chosen)})"
        state_dir = options.state_dir.resolve() / drill.name
        shutil.rmtree(state_dir, ignore_errors=True)
        fault = options.etcd_seconds if drill.name == "etcd-outage" else None
        progress("starting a fresh stack ...")
        result = run_drill(
            drill, state_dir, short=options.short, report=progress, fault_seconds=fault
        )
        results.append(result)
        print("\n".join(["", *report.drill_table(result), ""]), flush=True)
        header = [
            f"Run {started}, commit `{commit}`, {len(results)} of {len(chosen)} drills"
            f"{' (short versions)' if options.short else ''}."
        ]
        report.write(options.out, results, header)  # rewritten after each drill: partial runs count
    print("\n".join(["## Summary", "", *report.summary_table(results)]), flush=True)
    print(f"report: {options.out}", flush=True)
    return 0 if all(result.passed for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
