"""breaker.py on its own, with a clock the test moves."""

from __future__ import annotations

from services.auth.store.breaker import CircuitBreaker

COOL_DOWN = 1.0


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def new_breaker() -> tuple[CircuitBreaker, Clock, list[bool]]:
    clock = Clock()
    changes: list[bool] = []
    return CircuitBreaker(COOL_DOWN, changes.append, clock=clock), clock, changes


def test_a_failure_opens_it_for_every_caller_until_the_cool_down_is_over() -> None:
    breaker, clock, changes = new_breaker()
    first, second = breaker.admit(), breaker.admit()
    assert first is not None and second is not None and not first.probe
    breaker.failed(first)
    assert breaker.is_open and changes == [True]
    breaker.failed(second)  # sent before it opened: nothing more to say
    assert changes == [True]
    clock.now += COOL_DOWN - 0.01
    assert breaker.admit() is None


def test_only_one_probe_at_a_time_and_its_success_closes_it() -> None:
    breaker, clock, changes = new_breaker()
    opening = breaker.admit()
    assert opening is not None
    breaker.failed(opening)
    clock.now += COOL_DOWN
    probe = breaker.admit()
    assert probe is not None and probe.probe
    assert [breaker.admit() for _ in range(100)] == [None] * 100
    breaker.succeeded(probe)
    assert not breaker.is_open and changes == [True, False]
    again = breaker.admit()
    assert again is not None and not again.probe


def test_a_failed_probe_waits_a_whole_cool_down_before_the_next() -> None:
    breaker, clock, changes = new_breaker()
    opening = breaker.admit()
    assert opening is not None
    breaker.failed(opening)
    clock.now += COOL_DOWN
    probe = breaker.admit()
    assert probe is not None
    clock.now += 0.25
    breaker.failed(probe)
    clock.now += COOL_DOWN - 0.01
    assert breaker.admit() is None
    clock.now += 0.01
    next_probe = breaker.admit()
    assert next_probe is not None and next_probe.probe
    assert changes == [True]  # still the same outage: no more transitions


def test_a_late_success_from_before_the_opening_does_not_close_it() -> None:
    breaker, _, changes = new_breaker()
    slow, failing = breaker.admit(), breaker.admit()
    assert slow is not None and failing is not None
    breaker.failed(failing)
    breaker.succeeded(slow)
    assert breaker.is_open and changes == [True]


def test_an_abandoned_probe_frees_its_place_at_once() -> None:
    breaker, clock, _ = new_breaker()
    opening = breaker.admit()
    assert opening is not None
    breaker.failed(opening)
    clock.now += COOL_DOWN
    probe = breaker.admit()
    assert probe is not None
    breaker.abandoned(probe)
    replacement = breaker.admit()
    assert replacement is not None and replacement.probe


def test_tripping_an_open_breaker_keeps_its_probe() -> None:
    breaker, clock, changes = new_breaker()
    breaker.trip()
    clock.now += COOL_DOWN
    probe = breaker.admit()
    assert probe is not None
    breaker.trip()
    assert breaker.admit() is None
    breaker.succeeded(probe)
    assert not breaker.is_open and changes == [True, False]
