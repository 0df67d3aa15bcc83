"""The `gatehouse` console script run as an operator runs it: the script `make venv` installs
beside this Python, in a process of its own, with exactly the environment given."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GATEHOUSE = Path(sys.executable).with_name("gatehouse")
RUN_TIMEOUT = 60.0


@dataclass(frozen=True)
class Outcome:
    exit_code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)

    @property
    def stderr_lines(self) -> list[str]:
        return self.stderr.splitlines()


def environment_without_settings() -> dict[str, str]:
    """This process's environment with no GATEHOUSE_ variable."""
    return {key: value for key, value in os.environ.items() if not key.startswith("GATEHOUSE_")}


def run_gatehouse(*args: str, env: Mapping[str, str]) -> Outcome:
    """`gatehouse args...` with `env` as its whole environment."""
    done = subprocess.run(
        [str(GATEHOUSE), *args],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    assert "Traceback" not in done.stderr, done.stderr
    return Outcome(done.returncode, done.stdout, done.stderr)
