"""What the verified-token cache of an HTTP worker saves and costs: the CPU of a warm
`TokenVerifier.verify()` (a cache hit) against a cold one (the signature checked), what a new
token costs a full cache (the oldest entry evicted), and the memory a full cache holds.

    python -m bench.token_cache [--rounds 5] [--calls 20000] [--entries 10000]

Runs in this process; with PROMETHEUS_MULTIPROC_DIR set (to an empty folder), its metrics count
as a worker's do. Times are
CPU microseconds per call (the best round of `--rounds`). Memory is what tracemalloc sees
allocated by filling an empty cache with `--entries` tokens, typical ones (as the auth service
issues them) and the largest the cache keeps (CACHED_TOKEN_MAX_CHARS, the session id as long as
the rest allows). The eviction times are wall microseconds per add to a full cache of
`--entries`, `--calls` of them. Bounded: rounds x calls verifications, calls adds, and three
fills.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import tracemalloc
from collections.abc import Callable

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.auth.tokens import TokenIssuer, new_session_id
from services.http.tokens import Session, TokenVerifier
from services.http.verified_tokens import CACHED_TOKEN_MAX_CHARS, VerifiedToken, VerifiedTokens


def _verifier(issuer: TokenIssuer, cache_size: int) -> TokenVerifier:
    verifier = TokenVerifier(cache_size=cache_size)
    kid, record = issuer.public_key_record()
    verifier.replace_published({kid: record})
    return verifier


def _largest_cached_tokens(key: Ed25519PrivateKey, kid: str, count: int) -> list[str]:
    """Tokens of CACHED_TOKEN_MAX_CHARS characters at most, each session id as long as fits."""
    now = int(time.time())

    def token(number: int, sid_chars: int) -> str:
        claims = {
            "iss": "gatehouse",
            "aud": "gatehouse",
            "sub": str(10**19 + number),  # 20 digits, the longest user id
            "sid": f"{number:08d}".ljust(sid_chars, "s"),
            "iat": now,
            "exp": now + 3600,
        }
        return jwt.encode(claims, key, "EdDSA", headers={"kid": kid})

    sid_chars = 8
    while len(token(0, sid_chars + 1)) <= CACHED_TOKEN_MAX_CHARS:
        sid_chars += 1
    return [token(number, sid_chars) for number in range(count)]


def _cpu_us_per_call(call: Callable[[], object], calls: int, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.process_time()
        for _ in range(calls):
            call()
        best = min(best, time.process_time() - started)
    return best / calls * 1e6


def _eviction_us(entries: int, adds: int, entry: VerifiedToken) -> tuple[float, float, float]:
    """Mean, median and 99.9th percentile of an add to a full cache, which evicts the oldest."""
    cache = VerifiedTokens(entries)
    for number in range(entries):
        cache.add(f"filled-{number:0360d}", entry)
    times = []
    for number in range(adds):
        token = f"new-{number:0360d}"
        started = time.perf_counter()
        cache.add(token, entry)
        times.append(time.perf_counter() - started)
    times.sort()
    return (
        sum(times) / adds * 1e6,
        times[adds // 2] * 1e6,
        times[min(adds - 1, adds * 999 // 1000)] * 1e6,
    )


def _filled_bytes(verifier: TokenVerifier, tokens: list[str]) -> int:
    """What the cache holds once it took `tokens`: what verifying them left allocated, plus the
    token strings themselves (made before, here; from each request, in a worker)."""
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for token in tokens:
        verifier.verify(token)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return after - before + sum(sys.getsizeof(token) for token in tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--entries", type=int, default=10_000)
    args = parser.parse_args()

    key = Ed25519PrivateKey.generate()
    issuer = TokenIssuer(key, 3600)
    token = issuer.issue(1234567890123456789, new_session_id()).token
    cold = _verifier(issuer, cache_size=0)
    warm = _verifier(issuer, cache_size=args.entries)
    warm.verify(token)
    cold_us = _cpu_us_per_call(lambda: cold.verify(token), max(1, args.calls // 20), args.rounds)
    warm_us = _cpu_us_per_call(lambda: warm.verify(token), args.calls, args.rounds)
    mode = "multiprocess" if os.environ.get("PROMETHEUS_MULTIPROC_DIR") else "single-process"
    print(f"token of {len(token)} characters; metrics in {mode} mode")
    print(f"cold verify (signature checked): {cold_us:.1f} us CPU per call")
    print(f"warm verify (cache hit):         {warm_us:.2f} us CPU per call")
    entry = VerifiedToken(Session(1, new_session_id(), time.time() + 3600), issuer.kid, "", "")
    mean_us, median_us, p999_us = _eviction_us(args.entries, args.calls, entry)
    print(
        f"a new token in a full cache of {args.entries} (the oldest evicted): mean "
        f"{mean_us:.2f} us, median {median_us:.2f}, 99.9th percentile {p999_us:.2f}"
    )

    typical = [
        issuer.issue(10**18 + number, new_session_id()).token for number in range(args.entries)
    ]
    largest = _largest_cached_tokens(key, issuer.kid, args.entries)
    for name, tokens in (("typical", typical), ("largest cached", largest)):
        verifier = _verifier(issuer, cache_size=args.entries)
        used = _filled_bytes(verifier, tokens)
        print(
            f"{verifier.cached_count} {name} tokens ({len(tokens[0])} characters) cached: "
            f"{used / 2**20:.1f} MiB, {used / len(tokens):.0f} bytes per entry"
        )


if __name__ == "__main__":
    main()
