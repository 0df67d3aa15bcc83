"""The HorizontalPodAutoscaler's desired and current replicas over time, read with the
`kubernetes` client while a remote run loads the cluster (`--kubeconfig`)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

SAMPLE_SECONDS = 2.0
API_TIMEOUT_SECONDS = 5


class HpaRecorder:
    def __init__(self, kubeconfig: Path, namespace: str, name: str) -> None:
        from kubernetes import client, config  # the `bench` extra; only remote runs need it

        self._api = client.AutoscalingV2Api(config.new_client_from_config(str(kubeconfig)))
        self._namespace = namespace
        self._name = name
        self.samples: list[dict[str, float]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hpa-recorder", daemon=True)

    def start(self) -> None:
        self.sample()  # fails here, before any load, when the HPA cannot be read
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def sample(self) -> None:
        hpa = self._api.read_namespaced_horizontal_pod_autoscaler_status(
            self._name, self._namespace, _request_timeout=API_TIMEOUT_SECONDS
        )
        status = hpa.status
        if status is None:
            raise RuntimeError(f"HorizontalPodAutoscaler {self._name} has no status yet")
        self.samples.append(
            {
                "time": time.time(),
                "desired": float(status.desired_replicas or 0),
                "current": float(status.current_replicas or 0),
            }
        )

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            try:
                self.sample()
            except Exception as exc:  # noqa: BLE001 - a missed sample must not stop the run
                self.errors.append(str(exc))
