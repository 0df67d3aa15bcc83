"""Calls to the auth service: replica choice, retries, hedges and deadlines.

Replicas come from discovery (`update_replicas` is the ReplicaWatcher callback); when it lists
none at all, those that still answer keep taking calls for a while (unlisted_replicas.py).
Each call goes to the replica with the fewest calls outstanding, ties broken at random, among
those with a pooled connection while any has one; ejected replicas and replicas out of
rotation (they missed a health ping) are skipped unless no other is left (then load alone
decides). One call (all its attempts) gets GATEHOUSE_CALL_TIMEOUT.

Idempotent methods (the method table's `idempotent`, from the proto's `idempotency_level`)
run as a HedgedCall: hedged after the method's recent p99, moved off a slow or stalled
replica, retried after an answer that is not definite (see hedged_call.py). Every other method
(logins, signups, logouts, profile changes) is sent once, with the whole deadline, and tried
again on another replica only when that is safe: after DRAINING (the replica did not execute
it) or when the request never left this process. Callers write
`await auth.call(GET_PROFILE, request)` and get the method's reply message.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Coroutine
from typing import Any

from google.protobuf.message import DecodeError

from services.contract import auth_pb2 as pb
from services.contract.method import Method, ReplyT, RequestT
from services.foundation.discovery import ServiceRecord
from services.foundation.logs import trace_id_var
from services.foundation.metrics import BufferedHistograms
from services.foundation.rpc.client import CallFailed, ClientTls
from services.foundation.rpc.protocol import (
    NOT_READY_REASON,
    PROTOCOL_MAX,
    PROTOCOL_MIN,
    STATUS_NAMES,
    RpcError,
)
from services.foundation.rpc.tls import ReloadingTls
from services.foundation.tasks import every, stop_task
from services.http import metrics
from services.http.call_budget import call_budget_var
from services.http.hedged_call import Chooser, HedgedCall, error_of
from services.http.hedging import ExtraAttemptBudget, LatencyWindow
from services.http.replicas import Replica
from services.http.settings import HttpSettings
from services.http.unlisted_replicas import UnlistedReplicas

log = logging.getLogger(__name__)

_OUTCOMES = {status: name.lower() for status, name in STATUS_NAMES.items()}
MAINTENANCE_INTERVAL = 1.0
_RPC_SECONDS = BufferedHistograms(metrics.RPC_SECONDS)


class AuthClient:
    def __init__(self, settings: HttpSettings) -> None:
        self._settings = settings
        self._replicas: dict[str, Replica] = {}
        self._retiring: list[Replica] = []
        self._incompatible: set[ServiceRecord] = set()
        self._unlisted = UnlistedReplicas(settings)
        self._maintenance: asyncio.Task[None] | None = None
        self._health: asyncio.Task[None] | None = None
        self._tls = (
            ReloadingTls(settings.rpc_tls_files(), server=False) if settings.rpc_tls_on else None
        )
        self._tls_reload: asyncio.Task[None] | None = None
        self.client_tls = (
            ClientTls(self._tls.context, settings.rpc_tls_server_name) if self._tls else None
        )
        self._latencies: dict[str, LatencyWindow] = {}
        self._extra_attempts = ExtraAttemptBudget(settings.hedge_ratio)

    @property
    def replicas(self) -> dict[str, Replica]:
        return self._replicas

    async def start(self) -> None:
        interval = min(MAINTENANCE_INTERVAL, self._settings.pool_idle_timeout / 2)
        self._maintenance = asyncio.create_task(
            every(interval, self._maintain, "the auth pool upkeep"), name="auth pool upkeep"
        )
        self._health = asyncio.create_task(
            every(self._settings.ping_interval, self._check_health, "auth replica health pings"),
            name="auth replica health pings",
        )
        if self._tls is not None:
            # New connections use a rotated certificate; pooled ones keep theirs until they
            # cycle (idle timeout, replica restart).
            self._tls_reload = asyncio.create_task(
                every(self._settings.rpc_tls_reload_interval, self._tls.step, "RPC TLS reload"),
                name="RPC TLS reload",
            )

    async def close(self) -> None:
        await stop_task(self._maintenance)
        await stop_task(self._health)
        await stop_task(self._tls_reload)
        self._maintenance = self._health = self._tls_reload = None
        for replica in [*self._replicas.values(), *self._retiring]:
            replica.close()
        self._replicas.clear()
        self._retiring.clear()
        self._unlisted.clear()

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
        # Warned about once while listed: the records gone are forgotten, or rewriting one
        # record again and again would grow this set without end.
        self._incompatible &= set(records.values())
        now = asyncio.get_running_loop().time()
        unlisted_before = len(self._unlisted)
        self._unlisted.discovery_changed(bool(compatible), now)
        for name in list(self._replicas):
            replica = self._replicas[name]
            record = compatible.get(name)
            if record is not None:
                self._unlisted.listed(name)
                if record != replica.record:
                    self._retire(name, "registered again with another record")
            elif not self._unlisted.keeps(replica, now):
                self._retire(name, "left discovery")
        for name, record in compatible.items():
            if name not in self._replicas:
                replica = Replica(record, self._settings, self.client_tls)
                replica.may_leave_rotation = self._another_in_rotation
                replica.may_be_ejected = self._another_takes_calls
                self._replicas[name] = replica
                replica.maintain()  # connect now: calls should not wait for the next upkeep
                log.info("auth replica %s (%s) joined", name, replica.address)
        metrics.DISCOVERED_REPLICAS.set(len(self._replicas) - len(self._unlisted))
        self._unlisted.settle(unlisted_before, len(self._replicas))

    def _retire(self, name: str, why: str) -> None:
        replica = self._replicas.pop(name)
        replica.retire()
        self._retiring.append(replica)
        log.info("auth replica %s (%s) %s; draining it", name, replica.address, why)

    async def call(self, method: Method[RequestT, ReplyT], request: RequestT) -> ReplyT:
        """Call `method`; raises RpcError (CallFailed when no answer came) unless OK. Within a
        request, the deadline is what its earlier calls left of GATEHOUSE_CALL_TIMEOUT
        (services.http.call_budget)."""
        loop = asyncio.get_running_loop()
        payload = request.SerializeToString()
        trace_id = trace_id_var.get()
        budget = call_budget_var.get()
        started = loop.time()
        timeout = self._settings.call_timeout
        if budget is not None:
            timeout = budget.remaining(timeout)
            if timeout <= 0:
                metrics.RPC_REQUEST_DEADLINE_SPENT.labels(method.name).inc()
                raise CallFailed(
                    "deadline_exceeded",
                    "this request's earlier calls to the auth service used up its deadline"
                    " (GATEHOUSE_CALL_TIMEOUT)",
                    sent=False,
                )
        deadline = started + timeout

        def launch(replica: Replica, attempt_deadline: float) -> Coroutine[Any, Any, pb.Envelope]:
            return self._attempt(replica, method, payload, attempt_deadline, trace_id)

        def choose(avoid: set[Replica], strict: bool) -> Replica | None:
            return self._choose_for_attempt(avoid, strict, method.since_protocol)

        self._require_protocol(method)

        try:
            if method.idempotent:
                self._extra_attempts.on_call()
                envelope = await HedgedCall(
                    method_name=method.name,
                    choose=choose,
                    launch=launch,
                    budget=self._extra_attempts,
                    hedge_delay=self._hedge_delay(method.name),
                    attempt_timeout=self._settings.attempt_timeout,
                    deadline=deadline,
                ).run()
            else:
                envelope = await self._call_once(method.name, choose, launch, deadline)
        finally:
            if budget is not None:
                budget.spend(loop.time() - started)
        if envelope.status != pb.STATUS_OK:
            raise error_of(envelope)
        return _decode_reply(method.reply_type, envelope.payload)

    def _require_protocol(self, method: Method[Any, Any]) -> None:
        """Fail at once (UNAVAILABLE, so 503 with Retry-After) when no replica that takes
        calls advertises the protocol that introduced `method`: during a rolling upgrade, until
        the first new auth replica registers."""
        if method.since_protocol <= PROTOCOL_MIN:
            return
        if method.since_protocol <= PROTOCOL_MAX and any(
            replica.speaks(method.since_protocol) and not replica.draining
            for replica in self._replicas.values()
        ):
            return
        metrics.RPC_UNROUTABLE.labels(method.name).inc()
        raise RpcError(
            pb.STATUS_UNAVAILABLE,
            f"no auth replica speaks protocol {method.since_protocol}, which {method.name} "
            "needs (an upgrade is rolling out); retry shortly",
            "protocol_unavailable",
            retry_after_seconds=1,
        )

    async def _call_once(
        self,
        method_name: str,
        choose: Chooser,
        launch: Callable[[Replica, float], Coroutine[Any, Any, pb.Envelope]],
        deadline: float,
    ) -> pb.Envelope:
        """A call that must not run twice: a second attempt only where the first surely did
        not run (the request never left, or the replica answered DRAINING)."""
        loop = asyncio.get_running_loop()
        previous: Replica | None = None
        while True:
            avoid = {previous} if previous is not None else set()
            replica = choose(avoid, False)
            if replica is None and previous is not None and not previous.draining:
                replica = previous  # the only one left: better the same replica than none
            if replica is None:
                raise RpcError(
                    pb.STATUS_UNAVAILABLE,
                    "no auth replica can take calls (none registered, or all draining)",
                    "no_replica",
                )
            try:
                envelope = await launch(replica, deadline)
            except CallFailed as failure:
                error: RpcError = failure
                retryable, reason = not failure.sent, "unsent"
            else:
                if envelope.status != pb.STATUS_DRAINING:
                    return envelope
                error, retryable = error_of(envelope), True
                reason = "not_ready" if envelope.reason == NOT_READY_REASON else "draining"
            if previous is not None or not retryable or loop.time() >= deadline:
                try:
                    raise error
                finally:
                    del error  # this frame is in its traceback: no cycle (services.foundation.heap)
            metrics.RPC_RETRIES.labels(method_name, reason).inc()
            log.debug("retrying %s elsewhere after %s on %s", method_name, error, replica.name)
            previous = replica

    async def _attempt(
        self,
        replica: Replica,
        method: Method[RequestT, ReplyT],
        payload: bytes,
        deadline: float,
        trace_id: str,
    ) -> pb.Envelope:
        """One attempt on `replica`, observed in gatehouse_http_rpc_seconds."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        outcome = "abandoned"
        try:
            envelope = await replica.call(
                method.number,
                payload,
                timeout=deadline - started,
                trace_id=trace_id,
                since_protocol=method.since_protocol,
            )
        except CallFailed as failure:
            outcome = "deadline" if failure.reason == "deadline_exceeded" else "connection_error"
            raise
        else:
            outcome = _OUTCOMES.get(envelope.status, "unknown")
            if envelope.status == pb.STATUS_DRAINING and envelope.reason != NOT_READY_REASON:
                replica.draining = True
            self._latency_window(method.name).observe(loop.time() - started)
            return envelope
        finally:
            _RPC_SECONDS(method.name, outcome).observe(loop.time() - started)

    def _latency_window(self, method_name: str) -> LatencyWindow:
        window = self._latencies.get(method_name)
        if window is None:
            window = self._latencies[method_name] = LatencyWindow()
        return window

    def _hedge_delay(self, method_name: str) -> float:
        """The method's recent p99 within [hedge min delay, attempt timeout]."""
        p99 = self._latency_window(method_name).p99
        ceiling = self._settings.attempt_timeout
        if p99 is None:
            return ceiling
        return min(ceiling, max(self._settings.hedge_min_delay, p99))

    def _choose_for_attempt(
        self, avoid: set[Replica], strict: bool, protocol: int
    ) -> Replica | None:
        """The least busy replica not in `avoid` that speaks `protocol`; strict: only one in
        rotation and not ejected, else such a one if there is any and any other that is not
        draining."""
        now = asyncio.get_running_loop().time()
        chosen = self._least_outstanding(now, avoid, protocol, healthy_only=True)
        if chosen is None and not strict:
            chosen = self._least_outstanding(now, avoid, protocol, healthy_only=False)
        return chosen

    def _least_outstanding(
        self, now: float, avoid: set[Replica], protocol: int, *, healthy_only: bool
    ) -> Replica | None:
        """`healthy_only`: among those with a pooled connection if there are any. A replica
        without one has no load, and a call sent there waits for its connect, the whole
        connect timeout when its kernel accepts and its process never answers (SIGSTOPped);
        its pool connects in the background meanwhile. Not among the unhealthy: there the
        ones still pooled are the sick ones (a frozen replica's stalled connection stays
        pooled until it is closed), and load alone tells them apart."""
        best: Replica | None = None
        best_pooled = False
        ties = 0
        for replica in self._replicas.values():
            if (
                replica in avoid
                or replica.draining
                or not replica.speaks(protocol)
                or (healthy_only and (replica.ejected_until > now or not replica.in_rotation))
            ):
                continue
            pooled = healthy_only and replica.pooled
            if (
                best is None
                or pooled > best_pooled
                or (pooled == best_pooled and replica.load < best.load)
            ):
                best, best_pooled, ties = replica, pooled, 1
            elif pooled == best_pooled and replica.load == best.load:
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

    def _others_in_rotation(self, leaving: Replica) -> list[Replica]:
        return [
            replica
            for replica in self._replicas.values()
            if replica is not leaving and replica.in_rotation and not replica.draining
        ]

    def _another_in_rotation(self, leaving: Replica) -> bool:
        return bool(self._others_in_rotation(leaving))

    def _another_takes_calls(self, leaving: Replica) -> bool:
        """Whether a replica other than `leaving` is one the balancer prefers: in rotation, not
        draining, not ejected, and pooled (else a call waits for its connect)."""
        now = asyncio.get_running_loop().time()
        return any(
            replica.ejected_until <= now and replica.pooled
            for replica in self._others_in_rotation(leaving)
        )

    async def _check_health(self) -> None:
        for replica in self._replicas.values():
            replica.check_health()

    async def _maintain(self) -> None:
        if self._unlisted:
            now = asyncio.get_running_loop().time()
            unlisted_before = len(self._unlisted)
            for name in self._unlisted.names:
                replica = self._replicas.get(name)
                why = "is gone" if replica is None else self._unlisted.why_dropped(replica, now)
                if why is None:
                    continue
                self._unlisted.drop(name)
                if replica is not None:
                    self._retire(name, f"{why}, and has no discovery record")
            self._unlisted.settle(unlisted_before, len(self._replicas))
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
