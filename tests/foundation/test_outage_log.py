"""OutageLog: one logged pair per interval for something that flaps, a lasting outage always
logged, and the outages held back counted in the next warning."""

from __future__ import annotations

from services.foundation.outage_log import OutageLog


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_first_outage_and_its_end_are_logged_once_each() -> None:
    clock = FakeClock()
    outages = OutageLog(10.0, clock=clock)
    assert outages.failed() == 0
    clock.now += 1.0
    assert outages.failed() is None  # the same outage: logged already
    assert outages.down_for == 1.0
    assert outages.recovered()
    assert not outages.recovered()  # up already
    assert outages.down_for == 0.0


def test_flaps_within_the_interval_are_held_back_and_counted_in_the_next_warning() -> None:
    clock = FakeClock()
    outages = OutageLog(10.0, clock=clock)
    assert outages.failed() == 0
    assert outages.recovered()
    for _ in range(4):
        clock.now += 1.0
        assert outages.failed() is None
        assert not outages.recovered()  # its start was not logged: nor is its end
    clock.now += 7.0
    assert outages.failed() == 4
    assert outages.recovered()


def test_an_outage_held_back_is_logged_once_it_outlasts_the_interval() -> None:
    clock = FakeClock()
    outages = OutageLog(10.0, clock=clock)
    assert outages.failed() == 0
    assert outages.recovered()
    clock.now += 2.0
    assert outages.failed() is None  # held back
    clock.now += 5.0
    assert outages.failed() is None
    clock.now += 5.0
    assert outages.failed() == 0  # still down 12 s after the last logged one: logged now
    assert outages.down_for == 10.0
    assert outages.recovered()
