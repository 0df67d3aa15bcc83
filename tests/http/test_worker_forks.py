"""The workers' fork server: it imports the app without leaving metrics of its own, and
ignores SIGTERM; a worker forked from it writes its metrics under its own pid."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Runs as the fork server would: import the preload, then fork a "worker" that records one
# request; prints what the worker wrote.
_FORK_SERVER = """
import os, signal, sys
import services.http.workers.worker_preload
assert "services.http.asgi" in sys.modules, "the app was not preloaded"
assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
folder = os.environ["PROMETHEUS_MULTIPROC_DIR"]
assert os.listdir(folder) == [], f"the fork server left metrics: {os.listdir(folder)}"
child = os.fork()
if child == 0:
    from services.http.metrics import REQUEST_SECONDS
    REQUEST_SECONDS.labels(route="/healthz", status="200").observe(0.001)
    os._exit(0)
os.waitpid(child, 0)
print(child, os.getpid())
"""


def test_the_fork_server_preloads_the_app_and_leaves_no_metrics(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "PROMETHEUS_MULTIPROC_DIR": str(metrics)}
    result = subprocess.run(  # the exit code is checked below
        [sys.executable, "-c", _FORK_SERVER],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    child, fork_server = (int(pid) for pid in result.stdout.split())
    written = {path.name for path in metrics.iterdir()}
    assert f"histogram_{child}.db" in written, written
    assert not any(str(fork_server) in name for name in written), written
