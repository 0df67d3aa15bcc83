"""The one way the tests and the bench install packages into venvs of their own (the delivery
tools, the bench's peer): the uv that `make venv` installs beside the project's interpreter,
about 3x faster than pip here (pip resolves every package against the whole index again)."""

from __future__ import annotations

import sys
from pathlib import Path

UV = Path(sys.executable).with_name("uv")


def uv_pip_install(python: Path) -> list[str]:
    """The command that installs into the venv of `python`; append what to install. uv trusts
    the system's CAs (--system-certs), as pip is configured to on this machine."""
    if not UV.exists():
        raise FileNotFoundError(f"{UV} not found: run `make venv` (it installs uv from the lock)")
    return [str(UV), "pip", "install", "--quiet", "--system-certs", "--python", str(python)]
