"""Incremental snapshots (session 44): which epochs are bases, and when a
state is whole in a delta epoch.

Bases are the run's first epoch and every CHAIN-th after it, by number,
whatever each kernel wrote: every kernel and process of a cluster then
keeps the same fallback epoch (see test_session44_cluster_chains_review).
Chosen by each kernel from its bytes, they fell at different epochs. And
a state written over more than 1/WHOLE_PAST of its keys snapshots itself
whole, so a chain of CHAIN snapshots reads at most about twice a base."""

from __future__ import annotations

import pickle

from kernel import Operator
from kernel.runtime._epochs import CHAIN, EpochTracker
from state import value_state
from state._keyed import _FEW, WHOLE_PAST, KeyedDelta


def bases(first: int, part_size: int, epochs: int) -> list[int]:
    """The epochs a one-instance kernel starting at `first` writes whole,
    its parts `part_size` bytes (a small state's deltas, or a big one's)."""
    written = []
    tracker = EpochTracker(1, lambda epoch, blob: written.append((epoch, blob)), lambda blob: None,
                           first_epoch=first, deltas=True)
    for _ in range(epochs):
        epoch = tracker.take_epoch()
        tracker.part(0, epoch, pickle.dumps(b"x" * part_size))
    return [epoch for epoch, blob in written if not getattr(blob, "is_delta", False)]


def test_every_kernel_takes_its_bases_at_the_same_epochs_whatever_it_wrote():
    expected = [7 + CHAIN * n for n in range(4)]
    assert bases(7, 10, 4 * CHAIN) == expected
    assert bases(7, 100_000, 4 * CHAIN) == expected
    # (an epoch met without taking it, as a kernel whose sources ended: by number too)
    tracker = EpochTracker(1, lambda epoch, blob: None, lambda blob: None, first_epoch=7, deltas=True)
    assert [e for e in range(7, 7 + 2 * CHAIN + 1) if tracker.is_base(e)] == [7, 7 + CHAIN, 7 + 2 * CHAIN]


def test_a_state_written_over_more_than_its_fraction_of_keys_is_whole_in_a_delta_epoch():
    class Owner(Operator):
        pass

    keys = 20_000
    state = value_state(Owner(), "s")
    state.track_writes()
    state.update({f"k{i}": 0 for i in range(keys)})
    state.epoch_snapshot()  # (the first is whole: from here on, writes are noted)
    most = keys // WHOLE_PAST + _FEW
    few = [f"k{i}" for i in range(most)]
    state.update(dict.fromkeys(few, 1))
    state.written(few)
    delta = state.epoch_snapshot()
    assert isinstance(delta, KeyedDelta) and delta.changed == dict.fromkeys(few, 1)
    many = [f"k{i}" for i in range(most + 1)]
    state.update(dict.fromkeys(many, 2))
    state.written(many)
    whole = state.epoch_snapshot()
    assert type(whole) is dict and whole == {**{f"k{i}": 0 for i in range(keys)}, **dict.fromkeys(many, 2)}
