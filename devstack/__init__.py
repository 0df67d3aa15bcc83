"""Real local data stores (MariaDB primary + replica, Redis, etcd) for `make run` and the tests.

Both entry points go through `DataStores`, so the dev stack and the test stack never drift.
"""

import os

# Before anything imports grpc (the etcd client): with gRPC's fork support on, a child that
# devstack forks while the client is busy can run gRPC's poller after fork and abort before
# exec (SIGABRT, "epoll_wait error: Bad file descriptor"); 40 of 300 such children died in one
# measurement, none with it off. Nothing devstack forks uses the parent's gRPC channels.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

from devstack.stack import DataStores

__all__ = ["DataStores"]
