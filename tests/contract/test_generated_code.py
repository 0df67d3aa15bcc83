"""The committed generated code matches proto/ (regenerate with `make proto`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CONTRACT = REPO_ROOT / "services" / "contract"


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "tools.protogen", "--out", str(tmp_path)],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
    )
    generated = sorted(path.name for path in tmp_path.iterdir())
    assert generated == ["auth_methods.py", "auth_pb2.py", "auth_pb2.pyi"]
    for name in generated:
        assert (tmp_path / name).read_text() == (CONTRACT / name).read_text(), (
            f"services/contract/{name} is stale: run `make proto` and commit the result"
        )
