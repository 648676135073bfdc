"""State that cannot be pickled at an epoch names the key whose state it is,
not only the step: with many keys, "cannot pickle '_thread.lock' object"
alone left the user to search them all (found by a review)."""

from __future__ import annotations

import itertools
import threading

import pytest

from kernel import Dataflow, KernelProcessError, Operator, OperatorError, run
from kernel.runtime._epochs import UNPICKLABLE_STATE
from operators import Tumbling
from state import value_state

_LOCK = threading.Lock()
# (the first epoch comes within ms; a run that never meets the lock ends, not
# hangs, once these are done: "DID NOT RAISE" in seconds, not a 300 s timeout)
_RECORDS = 2_000_000


def _mod10(n):
    return n % 10


def _lock_at_7(state, n):
    """stateful_map: key 7's state is a lock from its first record on."""
    return (_LOCK if n % 10 == 7 else (state or 0) + 1), n


def _tally(state, n):
    return (state or 0) + 1, n


def _lock_in_window(total, n):
    return _LOCK if n == 23 or total is _LOCK else total + n


def _pair_with_lock(n):
    return (n, _LOCK) if n == 4 else n


class _ValueStateWithLock(Operator):
    def open(self, ctx):
        self.seen = value_state(self, "seen")

    def on_batch(self, port, batch):
        for key, n in batch:
            self.seen[key] = _LOCK if key == "k3" else n


class _OnEpochReturnsLock(Operator):
    def on_batch(self, port, batch):
        pass

    def on_epoch(self, epoch):
        return _LOCK


class _LockedKey:
    """A key that hashes (by identity) but does not pickle: on one kernel it never crosses."""

    def __init__(self):
        self.lock = _LOCK

    def __repr__(self):
        return "LockedKey()"


_ONE_KEY = _LockedKey()


def _locked_key(n):
    return _ONE_KEY if n == 5 else n % 3


def _keyed(flow):
    return flow.from_iterable(range(_RECORDS), batch_size=50, timestamp=float).key_by(_mod10)


def _stateful_map(flow):
    _keyed(flow).stateful_map(_lock_at_7).sink(id)
    return "stateful_map(_lock_at_7) (step 2)", "the state under key 7", "['states'][7]"


def _at_zero(n):
    return 0.0


def _window_fold(flow):
    # (every record at time 0: window 0 never closes, so the lock stays in it
    # till a snapshot takes it; closed first, it was gone, and the run went on
    # for ever: CI once ran it 300 s)
    keyed = flow.from_iterable(range(_RECORDS), batch_size=50, timestamp=_at_zero).key_by(_mod10)
    keyed.window(Tumbling(1000.0)).fold(0, _lock_in_window).sink(id)
    return "window fold(_lock_in_window) Tumbling(1000.0) (step 2)", "the state under key 3", \
        "['states']['windows'][0][3]"


def _join_buffer(flow):
    left = flow.from_iterable(itertools.count(), batch_size=50).map(_pair_with_lock).key_by(_key_of)
    # (the right side never ends, and meets no left key: a side whose other
    # side has ended keeps nothing, and the lock was then never in a snapshot)
    right = flow.from_iterable(itertools.repeat("r"), batch_size=50).key_by(_right_key)
    left.join(right).sink(id)
    return "join (step 5)", "the state under key 4", "['states']['left'][4][0][1][1]"


def _right_key(record):
    return record


def _key_of(record):
    return (record[0] if isinstance(record, tuple) else record) % 10


def _value_state(flow):
    flow.from_iterable(range(_RECORDS), batch_size=50).key_by(_k_name).apply(_ValueStateWithLock).sink(id)
    return "_ValueStateWithLock (step 2)", "the state under key 'k3'", "['seen']['k3']"


def _k_name(n):
    return f"k{n % 5}"


@pytest.mark.parametrize("build", [_stateful_map, _window_fold, _join_buffer, _value_state])
def test_state_that_does_not_pickle_names_its_key_and_where_it_is(tmp_path, build):
    flow = Dataflow("unpicklable")
    step, key, path = build(flow)
    with pytest.raises(OperatorError) as info:
        run(flow, state_dir=tmp_path / "state", epoch_interval=0.001)
    assert str(info.value) == (
        f"operator {step!r}: function 'pickle.dumps' raised TypeError: cannot pickle '_thread.lock' object\n"
        f"  {key} does not pickle (a _thread.lock, at {path} in the step's snapshot)\n  {UNPICKLABLE_STATE}")


def test_on_two_kernels_the_kernel_s_error_names_the_key_too(tmp_path):
    flow = Dataflow("unpicklable")
    _, key, path = _stateful_map(flow)
    with pytest.raises(KernelProcessError) as info:
        run(flow, cores=2, state_dir=tmp_path / "state", epoch_interval=0.001)
    assert f"{key} does not pickle (a _thread.lock, at {path} in the step's snapshot)" in str(info.value)


def test_a_key_that_does_not_pickle_is_named_as_the_key(tmp_path):
    """Its state pickles (a count): the dict holding it does not. Said as the
    state under key 'states' before the keys were looked at."""
    flow = Dataflow("unpicklable")
    flow.from_iterable(itertools.count(), batch_size=50).key_by(_locked_key).stateful_map(_tally).sink(id)
    with pytest.raises(OperatorError) as info:
        run(flow, state_dir=tmp_path / "state", epoch_interval=0.001)
    assert str(info.value).splitlines()[1] == (
        "  the key LockedKey() does not pickle (a test_session35_unpicklable_state._LockedKey, a key of "
        "['states'] in the step's snapshot)")


def test_a_snapshot_that_does_not_pickle_as_a_whole_says_no_key(tmp_path):
    flow = Dataflow("unpicklable")
    flow.from_iterable(itertools.count(), batch_size=50).apply(_OnEpochReturnsLock)
    with pytest.raises(OperatorError) as info:
        run(flow, state_dir=tmp_path / "state", epoch_interval=0.001)
    assert str(info.value) == (
        "operator '_OnEpochReturnsLock (step 1)': function 'pickle.dumps' raised TypeError: cannot pickle "
        f"'_thread.lock' object\n  {UNPICKLABLE_STATE}")


def _holds_itself(state, n):
    """A list that holds itself before the lock: followed down, it came
    back to itself for ever (the error never came)."""
    if state is None:
        state = []
        state.append(state)
        state.append(_LOCK)
    return state, n


def test_state_that_holds_itself_is_not_followed_round_for_ever(tmp_path):
    flow = Dataflow("unpicklable")
    flow.from_iterable(itertools.count(), batch_size=50).key_by(_mod10).stateful_map(_holds_itself).sink(id)
    with pytest.raises(OperatorError) as info:
        run(flow, state_dir=tmp_path / "state", epoch_interval=0.001)
    assert str(info.value).splitlines()[1] == (
        "  the state under key 0 does not pickle (a _thread.lock, at ['states'][0][1] in the step's "
        "snapshot)")


def _deeper_than_pickle_goes(state, n):
    if state is None:
        state = ()
        for i in range(20_000):
            state = (i, state)
    return state, n


def test_state_nested_deeper_than_pickle_goes_is_followed_a_few_levels_only(tmp_path):
    """Each level failed (RecursionError), so every level was followed: 20,000
    levels took seconds, and the error line held 20,000 indices."""
    flow = Dataflow("unpicklable")
    keyed = flow.from_iterable(itertools.count(), batch_size=50).key_by(_mod10)
    keyed.stateful_map(_deeper_than_pickle_goes).sink(id)
    with pytest.raises(OperatorError) as info:
        run(flow, state_dir=tmp_path / "state", epoch_interval=0.001)
    assert "raised RecursionError" in str(info.value)
    assert str(info.value).splitlines()[1] == (
        "  the state under key 0 does not pickle (a tuple, at ['states'][0]" + "[1]" * 9
        + " in the step's snapshot)")
