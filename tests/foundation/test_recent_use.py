"""Which clients used a resource lately: counts that decay, for a bounded number of clients."""

from __future__ import annotations

import pytest

from services.foundation.client_address import site_of
from services.foundation.recent_use import MAX_RANK, RecentUse, rank_of


def test_a_count_halves_every_half_life() -> None:
    recent = RecentUse(half_life=10.0)
    for _ in range(4):
        recent.started("198.51.100.1", now=100.0)
    assert recent.count("198.51.100.1", now=100.0) == 4.0
    assert recent.count("198.51.100.1", now=110.0) == pytest.approx(2.0)
    recent.started("198.51.100.1", now=120.0)
    assert recent.count("198.51.100.1", now=120.0) == pytest.approx(2.0)
    assert recent.count("198.51.100.2", now=120.0) == 0.0


def test_at_most_max_clients_are_remembered_the_least_recently_seen_forgotten_first() -> None:
    recent = RecentUse(half_life=10.0, max_clients=3)
    for number in range(1, 4):
        recent.started(f"198.51.100.{number}", now=float(number))
    recent.started("198.51.100.1", now=4.0)  # seen again: now the most recent
    recent.started("198.51.100.9", now=5.0)
    assert len(recent) == 3
    assert recent.count("198.51.100.2", now=5.0) == 0.0  # forgotten
    assert recent.count("198.51.100.1", now=5.0) > 1.0


def test_the_64s_of_one_48_are_one_client_and_ipv4_addresses_are_their_own() -> None:
    """Else whoever holds a /48 has 65,536 fresh /64 keys to look new with."""
    recent = RecentUse(half_life=10.0)
    recent.started("2001:db8:1:1::/64", now=0.0)
    recent.started("2001:db8:1:2::/64", now=0.0)
    assert recent.count("2001:db8:1:ffff::/64", now=0.0) == 2.0
    assert recent.count("2001:db8:2:1::/64", now=0.0) == 0.0
    recent.started("198.51.100.1", now=0.0)
    assert recent.count("198.51.100.2", now=0.0) == 0.0
    assert recent.count("198.51.100.1", now=0.0) == 1.0


@pytest.mark.parametrize(
    ("key", "site"),
    [
        ("2001:db8:1:2::/64", "2001:db8:1::/48"),
        ("198.51.100.1", "198.51.100.1"),
        ("unknown", "unknown"),  # a caller that sent no address
        ("2001:db8::/32", "2001:db8::/32"),  # wider than a site: as it is
        ("not/a network", "not/a network"),
    ],
)
def test_the_site_of_a_client_key(key: str, site: str) -> None:
    assert site_of(key) == site


def test_use_long_past_weighs_nothing_in_the_rank() -> None:
    """Compared raw, a leftover of 0.016 (one turn a minute ago) lost to every never-seen
    address: in quarters of a use it ties, and the caller's own order decides."""
    assert rank_of(0.01) == rank_of(0.2) == rank_of(0.0)
    assert rank_of(1.0) > rank_of(0.0)


def test_ranks_are_capped() -> None:
    """A queue keeps a line per rank: a client of any weight adds at most MAX_RANK of them."""
    assert rank_of(1e9) == rank_of(MAX_RANK) == MAX_RANK
    assert rank_of(63.9) < MAX_RANK
