"""The peer's own virtualenv, created on first use and rebuilt when requirements.txt changes."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tools.uv_install import uv_pip_install

REQUIREMENTS = Path(__file__).with_name("requirements.txt")
_STAMP = ".requirements-sha256"


def reference_python(venv: Path, report: Callable[[str], None]) -> Path:
    """The interpreter of `venv`, with requirements.txt installed (reused when unchanged)."""
    wanted = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    stamp = venv / _STAMP
    python = venv / "bin" / "python"
    if stamp.exists() and stamp.read_text() == wanted and python.exists():
        return python
    report(
        f"creating the peer's virtualenv in {venv} (once; reused while requirements.txt is unchanged)"
    )
    shutil.rmtree(venv, ignore_errors=True)
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [*uv_pip_install(python), "-r", str(REQUIREMENTS)],
    ]
    for argv in steps:
        result = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=900)
        if result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv[:4])} ... failed (exit {result.returncode}): "
                f"{result.stderr.strip()[-2000:]}; check the network and {REQUIREMENTS}"
            )
    stamp.write_text(wanted)
    return python
