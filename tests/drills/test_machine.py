"""The drill's account of the machine: its own CPU and the host's, over the load period."""

from __future__ import annotations

import time

from drills.machine import MachineShare, MachineWatch

BURN_SECONDS = 0.05


def test_the_generators_own_cpu_is_counted_within_the_hosts() -> None:
    watch = MachineWatch.start()
    started = time.process_time()
    deadline = time.monotonic() + 5.0
    while time.process_time() - started < BURN_SECONDS and time.monotonic() < deadline:
        pass  # CPU work that the watch must see
    share = watch.stop()
    assert share.generator_cpu >= BURN_SECONDS
    # The host's count includes this process (in clock ticks: one tick of slack).
    assert share.host_cpu >= share.generator_cpu - 0.02
    assert 0 < share.generator_percent <= 100.0 * share.cores


def test_the_note_gives_both_shares_and_the_load_averages() -> None:
    share = MachineShare(
        seconds=10.0, generator_cpu=0.8, host_cpu=15.0, cores=2, load_averages=(1.5, 3.0)
    )
    assert share.generator_percent == 8.0
    assert share.host_percent == 75.0
    assert share.note() == (
        "the load generator used 8% of one core; the host's 2 cores were 75% busy "
        "(1-minute load average 1.5 at the start of the load, 3.0 at its end)"
    )
