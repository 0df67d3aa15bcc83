"""The stack the OpenAPI tests call."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from devstack import DataStores
from devstack.gatehouse import Gatehouse
from tests.conftest import TEST_SETTINGS
from tests.system.support import stack_of_its_own

# The throttles would answer most fuzzed logins and signups 429 (they are documented, and
# tests/system/test_throttle.py covers them): raised here, so that the handlers get the calls.
OPENAPI_STACK_SETTINGS = {
    **TEST_SETTINGS,
    "GATEHOUSE_HTTP_WORKERS": "1",
    "GATEHOUSE_LOGIN_FAILURE_LIMIT": "1000000",
    "GATEHOUSE_LOGIN_IP_FAILURE_LIMIT": "1000000",
    "GATEHOUSE_SIGNUP_CONFLICT_LIMIT": "1000000",
}


@pytest.fixture(scope="package")
def openapi_stack(
    data_stores: DataStores, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gatehouse]:
    """One auth replica and one HTTP process of their own, with the throttles raised."""
    with stack_of_its_own(
        data_stores, tmp_path_factory.mktemp("openapi"), "openapi", OPENAPI_STACK_SETTINGS
    ) as stack:
        stack.start(1, 1)
        yield stack
