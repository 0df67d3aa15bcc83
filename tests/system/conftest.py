"""The system tests use the session fixtures `gatehouse` and `clients` of tests/conftest.py,
shared with the browser tests (tests/web)."""

from __future__ import annotations

from tests.conftest import TEST_SETTINGS

__all__ = ["TEST_SETTINGS"]  # test_faults reads the lease TTL from here
