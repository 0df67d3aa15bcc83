"""`corrected`: what a replica writes over etcd's rotation state, given its copy in MySQL and
its own last read, in the ways etcd can lose a newer state (emptied, restored from an older
snapshot, one from before the generation, a change made since on a restored etcd)."""

from __future__ import annotations

from services.auth.signing.etcd_records import StoredState
from services.auth.signing.ring import Correction, corrected
from services.auth.signing.state import (
    MAX_ENTRIES,
    RETIRED,
    RETIRING,
    SIGNING,
    KeyEntry,
    RotationState,
)


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


def test_an_emptied_etcd_gets_the_copy_with_every_retirement_numbered_past_every_generation() -> (
    None
):
    """The copy, not a last read, even a higher one: every replica reads the same copy, and a
    last read can be a branch that etcd has moved on from. Its retirements still hold."""
    memory = state(9, L=SIGNING, K=RETIRED, J=RETIRED)
    assert corrected(in_etcd(None), COPY, True, memory) == Correction(
        state(10, N=SIGNING, K=RETIRED, J=RETIRED), "held no rotation state", "the copy in MySQL"
    )
    assert corrected(in_etcd(None), None, False, memory) == Correction(
        memory.numbered(10), "held no rotation state", "the state this replica last read"
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


def test_a_copy_whose_signer_was_withdrawn_on_the_restored_etcd_is_not_written_back() -> None:
    """Restored etcd: the operator rotated to K and withdrew N (leaked) while the copy, where N
    signs, could not be read. Written back, the copy made N sign and be published again."""
    restored = state(6, K=SIGNING, N=RETIRED)
    older_branch = state(8, N=SIGNING, J=RETIRED)
    correction = corrected(in_etcd(restored), older_branch, True, None)
    assert written(correction) == {"K": SIGNING, "N": RETIRED, "J": RETIRED}
    assert correction is not None and correction.state.generation == 9


def test_a_state_signing_with_a_retired_key_gets_a_known_state_back_not_a_last_read_like_it() -> (
    None
):
    """etcd restored to K signing while the copy says K retired, then changed on: every
    replica's last read signs with K too, and is newer than the copy."""
    stale = state(7, K=SIGNING, L="verify-only")
    correction = corrected(in_etcd(stale), COPY, True, stale)
    assert written(correction) == {"N": SIGNING, "K": RETIRED}
    assert correction is not None and correction.state.generation == 8
    assert corrected(in_etcd(state(None, K=SIGNING)), COPY, True, None) is not None


def test_a_withdrawal_of_the_copys_signer_made_on_a_restored_etcd_moves_the_copy_on() -> None:
    """etcd restored to 6 while the copy (8, N signs) could not be read; the operator rotated
    to K and withdrew N: 8 again, beside the copy. Left as it was, the copy kept N signing, and
    the next emptied etcd got it back."""
    branch = state(8, K=SIGNING, N=RETIRED)
    correction = corrected(in_etcd(branch), state(8, N=SIGNING), True, None)
    assert written(correction) == {"K": SIGNING, "N": RETIRED}
    assert correction is not None and correction.state.generation == 9


def test_states_retiring_each_others_signer_leave_no_retired_key_signing() -> None:
    """No state known signs with a key nobody retired: etcd's signer is retired too (it may
    have leaked), with every other retirement, and another published key is made to sign."""
    current = state(6, K=SIGNING, N=RETIRED, L="verify-only")
    copy = state(5, N=SIGNING, K=RETIRED, J=RETIRED)
    correction = corrected(in_etcd(current), copy, True, None)
    assert written(correction) == {"K": RETIRED, "N": RETIRED, "J": RETIRED, "L": "verify-only"}
    assert correction is not None and correction.state.signing_kid is None


def test_a_state_without_generation_is_numbered_once_the_copy_can_be_read() -> None:
    older_release = state(None, N=SIGNING, K=RETIRED, L=RETIRING)
    assert corrected(in_etcd(older_release), None, False, COPY) is None
    assert corrected(in_etcd(older_release), COPY, True, None) == Correction(
        older_release.numbered(6), None
    )


def test_an_older_generation_is_judged_by_the_copy_not_by_this_replicas_memory() -> None:
    """Memory may be a branch etcd moved on from (here, a switch to M); its retirements hold."""
    current = state(5, N=SIGNING, K=RETIRED)
    memory = state(7, M=SIGNING, N=RETIRING, K=RETIRED, X=RETIRED)
    assert written(corrected(in_etcd(current), COPY, True, memory)) == {
        "N": SIGNING,
        "K": RETIRED,
        "X": RETIRED,
    }
    assert corrected(in_etcd(current), COPY, True, state(7, M=SIGNING, K=RETIRED)) is None


def test_a_state_past_the_entry_limit_is_no_loss_of_data() -> None:
    """Written by hand with more retired entries than a change keeps: pruning alone is no
    retirement etcd lost (it counted as a restore, and fired the alert, at every sync)."""
    many = state(3, N=SIGNING, **{f"R{number}": RETIRED for number in range(MAX_ENTRIES + 5)})
    assert corrected(in_etcd(many), many, True, many) is None
