"""Password hashing: peppered bcrypt on a bounded pool of low-priority threads.

A password is first normalized (Unicode NFKC, as NIST SP 800-63B advises), then keyed with
HMAC-SHA256 under a secret pepper, then base64-encoded and given to bcrypt. The pepper keeps a
stolen database useless without the service's secrets; the HMAC makes every password 44 bytes,
so bcrypt neither truncates nor rejects passwords longer than its 72-byte limit, and the base64
step keeps NUL bytes (which end a bcrypt input) out.

Logins are bound by bcrypt by design (one verify at cost 10 is about 60 ms of CPU; `make bench`
measures the ceiling), so hashing is kept off the event loop and bounded: at most `queue_limit`
hashes are queued or running, and a call that could not finish before its deadline is refused
at once with `Overloaded` instead of burning CPU for an answer nobody waits for. A queued hash
whose call was cancelled (its caller went away, see services.foundation.rpc.calls) is skipped when its
turn comes.

Queued hashes take their turns by client (the login throttle's IP key), not first in first out:
one client that keeps dozens of logins queued (the right password in a loop, which the throttle
never refuses) delays the login of a client with none queued by about one hash per client
queued, not by its whole queue. Before, one account logging in 100 at a time from one address
held 50 hashes queued per replica and other people's logins took 5 s, or were refused. The next
turn goes to the queued client that has had the fewest hashes lately
(services.foundation.recent_use; round-robin among equals): with plain round-robin, a client
new to the queue waited one turn for every other client queued, and an attacker spread over
144 addresses kept bystander logins waiting about 6 s. Nor may one client hold more than half
of GATEHOUSE_HASH_QUEUE_LIMIT queued: past the limit everyone's hashes are refused.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import math
import os
import secrets
import threading
import time
import unicodedata
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Generic, TypeVar

import bcrypt

from services.auth import metrics
from services.foundation.config import InvalidSecret
from services.foundation.recent_use import RecentUse, rank_of
from services.foundation.rpc.calls import CallScope, current_call

logger = logging.getLogger(__name__)

ResultT = TypeVar("ResultT")

# Niceness of hashing threads. CFS weighs a nice-10 thread at about a tenth of a nice-0 one, so
# when a login storm saturates the CPUs the event loop still gets the core it asks for at once:
# pings, profile reads and logouts keep their latency while logins queue.
HASHING_THREAD_NICENESS = 10
# Weight of the newest sample in the moving average of hash durations.
_DURATION_SMOOTHING = 0.2
# The client of hashes whose caller names none (tools, tests): they share one turn.
NO_CLIENT = ""


class Overloaded(Exception):
    """The hash was not computed: too much queued work, or its deadline came first. Retry later."""


# users.pepper_version is SMALLINT UNSIGNED: a higher version could not be stored with a hash.
MAX_PEPPER_VERSION = 65535


class UnknownPepperVersion(LookupError):
    """A stored hash names a pepper version that GATEHOUSE_PEPPERS no longer holds."""


def parse_peppers(raw: str) -> Mapping[int, bytes]:
    """Parse GATEHOUSE_PEPPERS ("1:secret,2:other") into {version: secret}; at least one.

    Error messages (InvalidSecret) name the entry by its position, never by its content: it
    holds a secret.
    """
    peppers: dict[int, bytes] = {}
    for position, entry in enumerate(raw.split(","), start=1):
        version_text, separator, secret = entry.strip().partition(":")
        version_text = version_text.strip()
        if not separator or not (version_text.isascii() and version_text.isdecimal()):
            raise InvalidSecret(
                f"entry {position} is not version:secret with a whole-number "
                "version; write the peppers as 1:secret,2:other"
            )
        version = int(version_text)
        if version > MAX_PEPPER_VERSION:
            raise InvalidSecret(
                f"entry {position}: pepper version {version} is above {MAX_PEPPER_VERSION}, the"
                " highest the users table stores; number the peppers 0-65535"
            )
        if not secret:
            raise InvalidSecret(
                f"pepper version {version} has an empty secret; give it a random value"
            )
        if version in peppers:
            raise InvalidSecret(f"pepper version {version} appears twice; keep one")
        peppers[version] = secret.encode("utf-8")
    return peppers


def usable_cpus(
    cgroup_root: Path = Path("/sys/fs/cgroup"),
    own_cgroups: Path = Path("/proc/self/cgroup"),
) -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup CPU quota when set."""
    cpus = len(os.sched_getaffinity(0))
    quota = _cgroup_cpu_quota(cgroup_root, own_cgroups)
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return cpus


class PasswordHasher:
    """Hashes and verifies passwords on its own thread pool, refusing work it cannot finish."""

    def __init__(
        self,
        peppers: Mapping[int, bytes],
        *,
        current_version: int | None = None,
        cost: int,
        threads: int = 0,
        queue_limit: int = 256,
    ) -> None:
        """`peppers` holds at least one pepper, and `current_version` (default: the highest)
        is the one new hashes use; `threads` 0 sizes the pool to `usable_cpus()`;
        `queue_limit` is at least 1 (AuthSettings checks all three).

        Blocks for one hash at `cost`: the dummy hash for unknown usernames, whose duration
        also seeds the estimate admission control works with.
        """
        self._peppers = dict(peppers)
        self._current_version = max(self._peppers) if current_version is None else current_version
        self._cost = cost
        self._threads = threads or usable_cpus()
        self._queue_limit = queue_limit
        self._pending = 0
        # Queued (not yet started) hashes per client, in turn order: the oldest hash of the
        # first client with the fewest recent turns runs next, and a client that had its turn
        # goes to the back. Shared with the hashing threads, under the lock, as are the turns.
        self._queues: OrderedDict[str, deque[_Job[Any]]] = OrderedDict()
        self._recent_turns = RecentUse()
        self._queues_lock = threading.Lock()
        self._closed = False
        self._executor = ThreadPoolExecutor(
            max_workers=self._threads,
            thread_name_prefix="password-hash",
            initializer=_lower_thread_priority,
        )
        started = time.thread_time()
        self._dummy_hash = self._hash(secrets.token_urlsafe(16))
        # Seeds the duration estimate with this machine's real cost of one hash.
        self._average_seconds = time.thread_time() - started
        logger.info(
            "password hasher ready: bcrypt cost %d, %d threads, queue limit %d, one hash %.0f ms",
            cost,
            self._threads,
            queue_limit,
            self._average_seconds * 1000,
        )

    @property
    def expected_hash_seconds(self) -> float:
        """The CPU time one hash is expected to take, by which calls are admitted."""
        return self._average_seconds

    @property
    def queue_depth(self) -> int:
        """Hashes queued or running now."""
        return self._pending

    async def hash_password(
        self, password: str, deadline: float, client: str = NO_CLIENT
    ) -> tuple[bytes, int]:
        """The bcrypt hash of `password` and the pepper version it used.

        `deadline` is a loop.time() value, as for every method here; `client` (the caller's IP
        key) decides the hash's turn among other clients'. Raises Overloaded.
        """
        password_hash = await self._run(lambda: self._hash(password), deadline, client)
        return password_hash, self._current_version

    async def verify_password(
        self,
        password: str,
        password_hash: bytes,
        pepper_version: int,
        deadline: float,
        client: str = NO_CLIENT,
    ) -> bool:
        pepper = self._peppers.get(pepper_version)
        if pepper is None:
            # Costs what a verify costs, as for unknown names: an instant answer would tell
            # anyone timing logins that the name is an account, one left on a dropped pepper.
            await self.verify_dummy(password, deadline, client)
            raise UnknownPepperVersion(
                f"the password hash uses pepper version {pepper_version}, which GATEHOUSE_PEPPERS "
                f"does not hold (it holds {sorted(self._peppers)}); add that version back"
            )
        return await self._run(lambda: _check(password, pepper, password_hash), deadline, client)

    async def verify_dummy(self, password: str, deadline: float, client: str = NO_CLIENT) -> None:
        """Spend the time of one verify, so an unknown username answers as slowly as a known one."""
        pepper = self._peppers[self._current_version]
        await self._run(lambda: _check(password, pepper, self._dummy_hash), deadline, client)

    def check_admission(self, deadline: float, client: str = NO_CLIENT) -> None:
        """Raise Overloaded now if a hash asked for with `deadline` would be refused.

        Callers check before any other work (a database lookup, say), so that refusing a call
        during a login storm costs microseconds instead of feeding the storm.
        """
        self._admit(deadline - asyncio.get_running_loop().time(), client)

    def needs_rehash(self, pepper_version: int, password_hash: bytes) -> bool:
        """True when the hash uses an old pepper or a cost other than the configured one."""
        return pepper_version != self._current_version or _cost_of(password_hash) != self._cost

    def close(self) -> None:
        """Stop taking work; queued hashes are skipped, running ones finish in the background."""
        self._closed = True
        self._executor.shutdown(wait=False)

    # internals

    def _hash(self, password: str) -> bytes:
        pepper = self._peppers[self._current_version]
        return bcrypt.hashpw(_prehash(password, pepper), bcrypt.gensalt(rounds=self._cost))

    async def _run(self, work: Callable[[], ResultT], deadline: float, client: str) -> ResultT:
        loop = asyncio.get_running_loop()
        seconds_left = deadline - loop.time()
        self._admit(seconds_left, client)
        # Worker threads read time.monotonic(), whose origin may differ from the loop's clock.
        start_by = time.monotonic() + seconds_left
        # Outside an RPC call (tests, tools) the scope is this hash's own.
        scope = current_call.get() or CallScope()
        job: _Job[ResultT] = _Job(work, start_by, scope, loop, loop.create_future())
        with self._queues_lock:
            self._queues.setdefault(client, deque()).append(job)
        # Each turn a thread takes runs the hash whose client is next, not necessarily this one.
        try:
            self._executor.submit(self._take_turn)
        except RuntimeError:  # the executor shut down (the interpreter exits): no turn comes
            with self._queues_lock:
                self._queues[client].remove(job)
                if not self._queues[client]:
                    del self._queues[client]
            raise Overloaded(
                "the password hasher is shutting down; retry on another replica"
            ) from None
        self._pending += 1
        job.done.add_done_callback(self._job_done)
        try:
            # Shielded so that the job's own completion, not the caller's, releases its slot.
            result, _ = await asyncio.shield(job.done)
        except asyncio.CancelledError:
            scope.abandoned = True
            raise
        return result

    def _admit(self, seconds_left: float, client: str) -> None:
        if self._closed:
            raise Overloaded("the password hasher is shutting down; retry on another replica")
        if self._pending >= self._queue_limit:
            raise Overloaded(
                f"{self._pending} password hashes are already queued (limit {self._queue_limit}); "
                "retry later"
            )
        own, ahead = self._ahead_of(client)
        if own >= max(1, self._queue_limit // 2):
            # Turns keep one client from delaying others, not from filling the queue, past which
            # everyone's hashes are refused.
            raise Overloaded(
                f"this client has {own} password hashes queued, half of the queue "
                f"(GATEHOUSE_HASH_QUEUE_LIMIT {self._queue_limit}); retry later"
            )
        # Rounds of work ahead of this call, plus its own; a hash finishing after the
        # deadline would only waste CPU other logins need.
        expected_seconds = (ahead // self._threads + 1) * self._average_seconds
        if expected_seconds > seconds_left:
            raise Overloaded(
                f"a password hash would take about {expected_seconds * 1000:.0f} ms here but the "
                f"call has {max(seconds_left, 0) * 1000:.0f} ms left; retry later"
            )

    def _ahead_of(self, client: str) -> tuple[int, int]:
        """`client`'s queued hashes, and the hashes that would run before one more of its:
        those running, its own queued ones, and as many of every other client's as the turns
        before it give them (none to a client that ranks after it now)."""
        with self._queues_lock:
            now = time.monotonic()
            rank = self._rank_of(client, now)
            queued = {key: len(jobs) for key, jobs in self._queues.items()}
            before = [
                len(jobs)
                for key, jobs in self._queues.items()
                if key != client and self._rank_of(key, now) <= rank
            ]
        own = queued.pop(client, 0)
        running = self._pending - own - sum(queued.values())
        return own, running + own + sum(min(count, own + 1) for count in before)

    def _take_turn(self) -> None:
        """Run the oldest queued hash of the client whose turn it is (in a hashing thread)."""
        with self._queues_lock:
            now = time.monotonic()
            # min() keeps the first of equals: round-robin among them.
            client = min(self._queues, key=lambda key: self._rank_of(key, now))
            jobs = self._queues.pop(client)
            job = jobs.popleft()
            if jobs:
                self._queues[client] = jobs  # to the back of the line
            if not (self._closed or job.scope.abandoned or now >= job.start_by):
                self._recent_turns.started(client, now)  # a skipped hash is no turn had
        outcome: tuple[Any, float] | None = None
        error: Exception | None = None
        try:
            outcome = self._run_in_turn(job.work, job.start_by, job.scope)
        except Exception as exc:  # noqa: BLE001 - the caller's to handle, as with run_in_executor
            error = exc
        if not job.loop.is_closed():
            job.loop.call_soon_threadsafe(_settle_job, job.done, outcome, error)

    def _rank_of(self, client: str, now: float) -> int:
        """A queued client's turn goes by the rank of its recent turns, round-robin among
        equals. Aging a queued hash by its wait was tried and undid the order under a flood: 144
        addresses whose hashes had waited seconds in line outranked each bystander again
        (1.2-5.4 s, against 0.2-0.6 s without aging)."""
        return rank_of(self._recent_turns.count(client, now))

    def _run_in_turn(
        self, work: Callable[[], ResultT], start_by: float, scope: CallScope
    ) -> tuple[ResultT, float]:
        if self._closed:
            metrics.HASHES.labels("skipped_shutdown").inc()
            raise Overloaded("the password hasher is shutting down; retry on another replica")
        if scope.abandoned:
            metrics.HASHES.labels("skipped_cancelled").inc()
            raise Overloaded("the call was cancelled while its password hash was queued")
        if time.monotonic() >= start_by:
            metrics.HASHES.labels("skipped_late").inc()
            raise Overloaded("the deadline passed while the password hash was queued; retry later")
        metrics.HASHES.labels("computed").inc()
        # The CPU time of this thread, not the wall time: at nice 10 under a busy event loop a
        # hash can take many times its cost in wall time, and an estimate fed with that would
        # refuse every login while the CPUs idle between bursts. What a hash costs when it runs
        # is what the throughput (threads / cost) depends on.
        started = time.thread_time()
        result = work()
        return result, time.thread_time() - started

    def _job_done(self, job: asyncio.Future[tuple[Any, float]]) -> None:
        self._pending -= 1
        if job.cancelled() or job.exception() is not None:
            return
        _, seconds = job.result()
        self._average_seconds += _DURATION_SMOOTHING * (seconds - self._average_seconds)


@dataclass(frozen=True)
class _Job(Generic[ResultT]):
    """One queued hash: what to run, by when it must start, and where its outcome goes."""

    work: Callable[[], ResultT]
    start_by: float
    scope: CallScope
    loop: asyncio.AbstractEventLoop
    done: asyncio.Future[tuple[ResultT, float]]


def _settle_job(
    done: asyncio.Future[tuple[Any, float]],
    outcome: tuple[Any, float] | None,
    error: BaseException | None,
) -> None:
    if done.done():
        return
    if outcome is None:
        done.set_exception(error or RuntimeError("a password hash ended without an outcome"))
    else:
        done.set_result(outcome)


def _prehash(password: str, pepper: bytes) -> bytes:
    # NFKC (NIST SP 800-63B): the same characters typed composed or decomposed (macOS sends
    # e + U+0301 where others send U+00E9), or in a compatibility form, are the same password.
    normalized = unicodedata.normalize("NFKC", password)
    # surrogatepass: a lone surrogate (refused at registration) must not crash a login attempt.
    keyed = hmac.new(pepper, normalized.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()
    return base64.b64encode(keyed)


def _check(password: str, pepper: bytes, password_hash: bytes) -> bool:
    try:
        return bcrypt.checkpw(_prehash(password, pepper), password_hash)
    except ValueError as exc:
        raise ValueError(
            f"the stored password hash is not a bcrypt hash ({exc}); reset the password"
        ) from None


def _cost_of(password_hash: bytes) -> int | None:
    # "$2b$10$<salt+digest>": the cost is the third field.
    fields = password_hash.split(b"$")
    if len(fields) != 4 or not fields[2].isdigit():
        return None
    return int(fields[2])


def _lower_thread_priority() -> None:
    try:
        # On Linux, PRIO_PROCESS with a thread id renices that thread only.
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), HASHING_THREAD_NICENESS)
    except OSError as exc:
        logger.warning("could not lower the priority of a hashing thread: %s", exc)


def _cgroup_cpu_quota(cgroup_root: Path, own_cgroups: Path) -> float | None:
    """The smallest CPU quota (in CPUs) on this process's cgroup or its ancestors, if any.

    Reads cgroup v2 `cpu.max` and cgroup v1 `cpu.cfs_quota_us`/`cpu.cfs_period_us`. The
    process's cgroup path may not exist under `cgroup_root` (a container without a cgroup
    namespace sees the host's path), so every ancestor up to the root is read too.
    """
    quotas = [
        quota
        for directory in _cpu_cgroup_directories(cgroup_root, own_cgroups)
        if (quota := _read_quota(directory)) is not None
    ]
    return min(quotas, default=None)


def _cpu_cgroup_directories(cgroup_root: Path, own_cgroups: Path) -> list[Path]:
    """Directories that may hold this process's CPU limits: its cgroup and every ancestor."""
    try:
        lines = own_cgroups.read_text().splitlines()
    except OSError:
        return [cgroup_root, cgroup_root / "cpu"]
    directories: dict[Path, None] = {}  # ordered and free of duplicates
    for line in lines:
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        _, controllers, path = fields
        if controllers == "":  # cgroup v2: one hierarchy, at the root or (hybrid) at unified/
            mounts = [cgroup_root, cgroup_root / "unified"]
        elif "cpu" in controllers.split(","):  # cgroup v1: the cpu controller's mount
            mounts = [cgroup_root / controllers, cgroup_root / "cpu", cgroup_root / "cpu,cpuacct"]
        else:
            continue
        relative = PurePosixPath(path.lstrip("/"))
        for mount in mounts:
            directories[mount / relative] = None
            directories.update((mount / parent, None) for parent in relative.parents)
    return list(directories)


def _read_quota(directory: Path) -> float | None:
    v2 = directory / "cpu.max"
    v1_quota = directory / "cpu.cfs_quota_us"
    try:
        if v2.is_file():
            quota, _, period = v2.read_text().partition(" ")
            return None if quota.strip() == "max" else int(quota) / int(period)
        if v1_quota.is_file():
            quota_us = int(v1_quota.read_text())
            period_us = int((directory / "cpu.cfs_period_us").read_text())
            return None if quota_us <= 0 else quota_us / period_us
    except (OSError, ValueError, ZeroDivisionError) as exc:
        logger.warning("ignoring the unreadable CPU quota in %s: %s", directory, exc)
    return None
