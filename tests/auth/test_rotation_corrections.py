"""`corrected`: what a replica writes over etcd's rotation state, given its copy in MySQL and
its own last read, in the ways etcd can lose a newer state (emptied, restored from an older
snapshot, one from before the generation, a change made since on a restored etcd)."""

from __future__ import annotations

from services.auth.signing.etcd_records import StoredState
from services.auth.signing.ring import Correction, corrected
from services.auth.signing.state import RETIRED, RETIRING, SIGNING, KeyEntry, RotationState


def state(generation: int | None, **keys: str) -> RotationState:
    return RotationState({kid: _entry(name) for kid, name in keys.items()}, generation)


def _entry(name: str) -> KeyEntry:
    return KeyEntry(name, 1.0, 2.0 if name == RETIRING else None)


def in_etcd(stored: RotationState | None) -> StoredState:
    return StoredState(stored or RotationState({}), 0 if stored is None else 42)


def written(correction: Correction | None) -> dict[str, str]:
    assert correction is not None and correction.lost is not None
    return {kid: entry.state for kid, entry in correction.state.keys.items()}


# The rotation to N with K retired, as the copy and the replicas hold it; K was withdrawn.
COPY = state(5, N=SIGNING, K=RETIRED)


def test_an_emptied_etcd_gets_the_newest_state_known() -> None:
    memory = state(6, N=SIGNING, K=RETIRED, J=RETIRED)
    correction = corrected(in_etcd(None), COPY, True, memory)
    assert correction is not None and correction.state == memory
    assert corrected(in_etcd(None), COPY, True, None) == Correction(
        COPY, "held no rotation state", "the copy in MySQL"
    )
    assert corrected(in_etcd(None), None, False, None) is None  # the caller starts one, or not


def test_a_snapshot_from_before_the_generation_gets_its_retirements_back() -> None:
    """No generation to compare: numbered as it was, K would have stayed published."""
    snapshot = state(None, N=SIGNING)
    correction = corrected(in_etcd(snapshot), COPY, True, None)
    assert written(correction) == {"N": SIGNING, "K": RETIRED}
    assert correction is not None and correction.state.generation == 6


def test_a_change_made_on_a_restored_etcd_keeps_it_and_the_copys_retirements() -> None:
    """Restored to generation 4, then one change: 5, as high as the copy but another branch."""
    branch = state(5, N=SIGNING, L="verify-only")
    assert written(corrected(in_etcd(branch), COPY, True, None)) == {
        "N": SIGNING,
        "L": "verify-only",
        "K": RETIRED,
    }


def test_the_copy_written_back_keeps_a_withdrawal_made_on_the_restored_etcd() -> None:
    """The copy (8) could not be read while an operator withdrew J on etcd's generation 6."""
    restored = state(6, N=SIGNING, J=RETIRED)
    newer_copy = state(8, N=SIGNING, K=RETIRED)
    correction = corrected(in_etcd(restored), newer_copy, True, None)
    assert written(correction) == {"N": SIGNING, "K": RETIRED, "J": RETIRED}
    assert correction is not None and correction.state.generation == 9


def test_a_state_signing_with_a_retired_key_gets_the_newest_known_back() -> None:
    stale = state(None, K=SIGNING)
    correction = corrected(in_etcd(stale), COPY, True, None)
    assert written(correction) == {"N": SIGNING, "K": RETIRED}


def test_a_state_without_generation_is_numbered_once_the_copy_can_be_read() -> None:
    older_release = state(None, N=SIGNING, K=RETIRED, L=RETIRING)
    assert corrected(in_etcd(older_release), None, False, COPY) is None
    assert corrected(in_etcd(older_release), COPY, True, None) == Correction(
        older_release.numbered(6), None
    )


def test_an_older_generation_is_judged_by_the_copy_not_by_this_replicas_memory() -> None:
    """Memory may be a branch etcd moved on from; its retirements still hold."""
    current = state(5, N=SIGNING, K=RETIRED)
    memory = state(7, M=SIGNING, N=RETIRING, K=RETIRED)
    assert corrected(in_etcd(current), COPY, True, memory) is None
    assert corrected(in_etcd(current), None, False, state(7, N=SIGNING, X=RETIRED)) is not None
