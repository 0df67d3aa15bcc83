"""Calls to the auth service: replica choice, retries and deadlines.

Replicas come from discovery (`update_replicas` is the ReplicaWatcher callback). Each call
goes to the replica with the fewest calls outstanding, ties broken at random; ejected
replicas are skipped unless every replica is ejected. One call (all its attempts) gets
GATEHOUSE_CALL_TIMEOUT. A failed attempt is tried once more on another replica when that is
safe: always after DRAINING (the replica did not execute it) or when the request never left
this process; for idempotent methods (the method table's `idempotent`, from the proto's
`idempotency_level`) also after any failure that is not a definite answer. Callers write
`await auth.call(GET_PROFILE, request)` and get the method's reply message.
"""

from __future__ import annotations

import asyncio
import logging
import random

from google.protobuf.message import DecodeError

from services.contract import auth_pb2 as pb
from services.contract.method import Method, ReplyT, RequestT
from services.foundation.discovery import ServiceRecord
from services.foundation.logs import trace_id_var
from services.foundation.rpc.client import CallFailed
from services.foundation.rpc.protocol import (
    PROTOCOL_MAX,
    PROTOCOL_MIN,
    STATUS_NAMES,
    RpcError,
)
from services.foundation.tasks import stop_task
from services.http import metrics
from services.http.replicas import Replica
from services.http.settings import HttpSettings

log = logging.getLogger(__name__)

# Answers that another replica would give just the same: never retried.
DEFINITE_STATUSES = frozenset(
    {
        pb.STATUS_OK,
        pb.STATUS_INVALID,
        pb.STATUS_NOT_FOUND,
        pb.STATUS_CONFLICT,
        pb.STATUS_UNAUTHENTICATED,
    }
)
_OUTCOMES = {status: name.lower() for status, name in STATUS_NAMES.items()}
MAINTENANCE_INTERVAL = 1.0


class AuthClient:
    def __init__(self, settings: HttpSettings) -> None:
        self._settings = settings
        self._replicas: dict[str, Replica] = {}
        self._retiring: list[Replica] = []
        self._incompatible: set[ServiceRecord] = set()
        self._maintenance: asyncio.Task[None] | None = None

    @property
    def replicas(self) -> dict[str, Replica]:
        return self._replicas

    async def start(self) -> None:
        interval = min(MAINTENANCE_INTERVAL, self._settings.pool_idle_timeout / 2)
        self._maintenance = asyncio.create_task(
            self._maintain_forever(interval), name="auth pool upkeep"
        )

    async def close(self) -> None:
        await stop_task(self._maintenance)
        self._maintenance = None
        for replica in [*self._replicas.values(), *self._retiring]:
            replica.close()
        self._replicas.clear()
        self._retiring.clear()

    def readiness(self) -> str | None:
        """None when calls can be served, else why not (for /readyz)."""
        if not self._replicas:
            return "no auth replica is registered in discovery; start one or check etcd"
        serving = [replica for replica in self._replicas.values() if not replica.draining]
        if not serving:
            return "every known auth replica is draining; wait for new ones to register"
        if not any(replica.connected for replica in serving):
            return (
                f"no connection to an auth replica is open yet ({len(serving)} known from "
                "discovery); check that they are reachable"
            )
        return None

    def update_replicas(self, records: dict[str, ServiceRecord]) -> None:
        """Take the current replica set from discovery."""
        compatible = {
            name: record for name, record in records.items() if self._is_compatible(record)
        }
        for name in list(self._replicas):
            replica = self._replicas[name]
            if compatible.get(name) != replica.record:
                del self._replicas[name]
                replica.retire()
                self._retiring.append(replica)
                log.info("auth replica %s (%s) left discovery; draining it", name, replica.address)
        for name, record in compatible.items():
            if name not in self._replicas:
                replica = Replica(record, self._settings)
                self._replicas[name] = replica
                replica.maintain()  # connect now: calls should not wait for the next upkeep
                log.info("auth replica %s (%s) joined", name, replica.address)
        metrics.DISCOVERED_REPLICAS.set(len(self._replicas))

    async def call(self, method: Method[RequestT, ReplyT], request: RequestT) -> ReplyT:
        """Call `method`; raises RpcError (CallFailed when no answer came) unless OK."""
        loop = asyncio.get_running_loop()
        payload = request.SerializeToString()
        trace_id = trace_id_var.get()
        method_name = method.name
        deadline = loop.time() + self._settings.call_timeout
        previous: Replica | None = None
        while True:
            replica = self._choose(loop.time(), avoid=previous)
            if replica is None:
                raise RpcError(
                    pb.STATUS_UNAVAILABLE,
                    "no auth replica can take calls (none registered, or all draining)",
                    "no_replica",
                )
            started = loop.time()
            try:
                envelope = await replica.call(
                    method.number, payload, timeout=deadline - started, trace_id=trace_id
                )
            except CallFailed as failure:
                outcome = (
                    "deadline" if failure.reason == "deadline_exceeded" else "connection_error"
                )
                metrics.RPC_SECONDS.labels(method_name, outcome).observe(loop.time() - started)
                error: RpcError = failure
                retryable = method.idempotent or not failure.sent
            else:
                status = envelope.status
                metrics.RPC_SECONDS.labels(method_name, _OUTCOMES.get(status, "unknown")).observe(
                    loop.time() - started
                )
                if status == pb.STATUS_OK:
                    return _decode_reply(method.reply_type, envelope.payload)
                if status == pb.STATUS_DRAINING:
                    replica.draining = True
                error = RpcError(
                    status,
                    envelope.message,
                    envelope.reason,
                    retry_after_seconds=envelope.retry_after_seconds,
                )
                retryable = status == pb.STATUS_DRAINING or (
                    method.idempotent and status not in DEFINITE_STATUSES
                )
            if previous is not None or not retryable or loop.time() >= deadline:
                raise error
            metrics.RPC_RETRIES.labels(method_name).inc()
            log.debug("retrying %s elsewhere after %s on %s", method_name, error, replica.name)
            previous = replica

    def _choose(self, now: float, avoid: Replica | None) -> Replica | None:
        chosen = self._least_outstanding(now, avoid, skip_ejected=True) or self._least_outstanding(
            now, avoid, skip_ejected=False
        )
        if chosen is None and avoid is not None and not avoid.draining:
            return avoid  # the only one left: better the same replica than none
        return chosen

    def _least_outstanding(
        self, now: float, avoid: Replica | None, *, skip_ejected: bool
    ) -> Replica | None:
        best: Replica | None = None
        ties = 0
        for replica in self._replicas.values():
            if (
                replica is avoid
                or replica.draining
                or (skip_ejected and replica.ejected_until > now)
            ):
                continue
            if best is None or replica.outstanding < best.outstanding:
                best, ties = replica, 1
            elif replica.outstanding == best.outstanding:
                ties += 1
                if random.random() * ties < 1:  # keeps each of the tied equally likely
                    best = replica
        return best

    def _is_compatible(self, record: ServiceRecord) -> bool:
        if record.protocol_min <= PROTOCOL_MAX and record.protocol_max >= PROTOCOL_MIN:
            return True
        if record not in self._incompatible:
            self._incompatible.add(record)
            log.warning(
                "ignoring auth replica %s: it speaks protocol %d..%d, this HTTP tier %d..%d",
                record.instance_id,
                record.protocol_min,
                record.protocol_max,
                PROTOCOL_MIN,
                PROTOCOL_MAX,
            )
        return False

    async def _maintain_forever(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self._maintain()

    def _maintain(self) -> None:
        for replica in self._replicas.values():
            replica.maintain()
        for replica in [*self._retiring, *self._replicas.values()]:
            metrics.POOL_CONNECTIONS.labels(replica.name).set(replica.connection_count)
            metrics.POOL_IN_FLIGHT.labels(replica.name).set(replica.outstanding)
        for replica in [r for r in self._retiring if r.closed]:
            self._retiring.remove(replica)
            if replica.name not in self._replicas:  # else the same instance registered again
                # Multiprocess mode cannot remove a labelled series: it stays, at zero.
                metrics.POOL_CONNECTIONS.labels(replica.name).set(0)
                metrics.POOL_IN_FLIGHT.labels(replica.name).set(0)


def _decode_reply(reply_type: type[ReplyT], payload: bytes) -> ReplyT:
    try:
        return reply_type.FromString(payload)
    except DecodeError as exc:
        raise RpcError(
            pb.STATUS_INTERNAL,
            f"the auth service sent an undecodable {reply_type.__name__}: {exc}",
            "bad_reply",
        ) from None
