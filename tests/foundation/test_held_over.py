"""The entries of a lost etcd history held for a grace: written names leave at once, the grace
ends with the rest, and it counts only the time the watch works."""

from __future__ import annotations

from services.foundation.held_over import HeldOver
from tests.loop_time import past

GRACE = 0.05


async def test_a_written_name_leaves_at_once_and_the_grace_ends_with_the_rest() -> None:
    ended: list[list[str]] = []
    counts: list[int] = []
    held = HeldOver(GRACE, on_end=ended.append, on_count=counts.append)
    held.hold({"a": b"old", "b": b"old"})

    assert held.merged({"a": b"new"}) == {"a": b"new", "b": b"old"}
    assert held.merged({}) == {"b": b"old"}  # "a" deleted in the new history: gone
    assert (len(held), counts, ended) == (1, [2, 1], [])

    await past(GRACE)
    assert (len(held), counts, ended) == (0, [2, 1, 0], [["b"]])
    assert held.merged({"c": b"v"}) == {"c": b"v"}


async def test_an_outage_pauses_the_grace() -> None:
    ended: list[list[str]] = []
    held = HeldOver(GRACE, on_end=ended.append, on_count=lambda count: None)
    held.hold({"a": b"old"})
    held.watch_down()
    await past(2 * GRACE)
    assert (len(held), ended) == (1, [])  # nobody could write it again meanwhile

    held.watch_up()  # what was left: the whole grace
    assert (len(held), ended) == (1, [])
    await past(GRACE)
    assert (len(held), ended) == (0, [["a"]])


async def test_a_watch_that_fails_and_comes_back_gets_only_what_was_left() -> None:
    ended: list[list[str]] = []
    held = HeldOver(GRACE, on_end=ended.append, on_count=lambda count: None)
    held.hold({"a": b"old"})
    await past(GRACE / 2)
    held.watch_down()
    held.watch_up()  # a half at most was left, not a whole grace afresh
    await past(0.75 * GRACE)
    assert (len(held), ended) == (0, [["a"]])


async def test_nothing_is_held_without_a_grace_and_clear_forgets() -> None:
    counts: list[int] = []
    none = HeldOver(0.0, on_end=lambda names: None, on_count=counts.append)
    none.hold({"a": b"old"})
    assert (len(none), none.merged({}), counts) == (0, {}, [])

    ended: list[list[str]] = []
    held = HeldOver(GRACE, on_end=ended.append, on_count=counts.append)
    held.hold({"a": b"old"})
    held.clear()
    await past(2 * GRACE)
    assert (len(held), held.merged({}), counts, ended) == (0, {}, [1, 0], [])
