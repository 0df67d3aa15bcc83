"""Real local data stores (MariaDB primary + replica, Redis, etcd) for `make run` and the tests.

Both entry points go through `DataStores`, so the dev stack and the test stack never drift.
"""

from devstack.stack import DataStores

__all__ = ["DataStores"]
