"""Session 39: what a publisher with snapshots (a job with a state_dir)
keeps for its subscribers away (a broken connection's, a restarted
publisher's coming back: RESUME_EPOCHS epochs) is bounded in bytes by
`retain_bytes` where the job gives it, as retain=N's epochs are: a fast
publisher kept 10 epochs whatever their size, in memory and in each
snapshot (1.1 GB of them on disk, measured), and still does by default,
so that a subscriber away misses nothing. A subscriber coming back that
lacks an epoch dropped so starts after the last epoch out, as one past
RESUME_EPOCHS does. Unit-level, as test_publisher_memory.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_publisher_memory import _Link, _publisher

from kernel.topics._publish import _Epoch, _Subscriber

MIB = 1 << 20


def _away(publisher, had: int) -> None:
    """A subscriber that had every epoch up to `had`, whose connection broke."""
    sub = _Subscriber(_Link(), "b")
    publisher._start(sub, had)
    publisher.subscribers.append(sub)
    publisher._forget(sub)


def _out(publisher, epoch: int, size: int) -> None:
    publisher.epoch = epoch
    publisher._released.append(_Epoch(epoch, 0.0, [(1, b"")], size))
    publisher._prune()


def test_what_is_kept_for_a_subscriber_away_is_at_most_retain_bytes(caplog):
    publisher = _publisher()
    publisher.retain_bytes = 4 * MIB
    publisher._retain_bytes_given = True  # (as publish(retain_bytes=...))
    _away(publisher, 0)
    most = 0
    for epoch in range(1, 9):  # 3 MiB an epoch, within RESUME_EPOCHS
        _out(publisher, epoch, 3 * MIB)
        most = max(most, sum(e.size for e in publisher._released))
        assert publisher._released[-1].number == epoch  # (the last out is always kept)
    assert most <= 4 * MIB, f"{most / MIB:g} MiB kept for a subscriber away (retain_bytes=4 MiB)"
    assert "epoch 1 is no longer kept for the subscribers away (retain_bytes=4194304)" in caplog.text
    # it comes back, having epoch 0 only: what it lacks is gone, so it is not resumed
    # (it starts after the last epoch out, its log saying which epochs it missed)
    assert not publisher._resume(_Subscriber(_Link(), "b"), 0)
    # within the bound, everything it lacks is kept, as before
    small = _publisher()
    _away(small, 0)
    for epoch in range(1, 9):
        _out(small, epoch, 1000)
    assert [e.number for e in small._released] == list(range(1, 9))
    assert small._resume(_Subscriber(_Link(), "b"), 0)


def test_without_retain_bytes_a_subscriber_away_misses_nothing_however_large_the_epochs():
    """The bound is the job's to ask for: by default what a subscriber
    whose connection broke lacks is kept whole for RESUME_EPOCHS epochs,
    past the 64 MiB that bounds retain=N, so it comes back missing nothing
    (exactly once, as a job with a state_dir promises)."""
    publisher = _publisher()
    _away(publisher, 0)
    for epoch in range(1, 9):
        _out(publisher, epoch, 20 * MIB)
    assert [e.number for e in publisher._released] == list(range(1, 9))
    assert publisher._resume(_Subscriber(_Link(), "b"), 0)


def test_what_an_active_subscriber_lacks_is_kept_past_retain_bytes():
    """Only what is kept for the subscribers away is bounded: the epochs a
    connected subscriber has not acknowledged yet stay (exactly once across
    a restart), whatever their size."""
    publisher = _publisher()
    publisher.retain_bytes = 4 * MIB
    publisher._retain_bytes_given = True  # (as publish(retain_bytes=...))
    _away(publisher, 0)
    sub = _Subscriber(_Link(), "c")  # connected: its credit says it has epoch 2
    publisher._start(sub, 2)
    publisher.subscribers.append(sub)
    for epoch in range(1, 7):
        _out(publisher, epoch, 3 * MIB)
    # (1 and 2, 6 MiB, kept for the subscriber away only: 1 goes, 2 fits the 4 MiB)
    assert [e.number for e in publisher._released] == [2, 3, 4, 5, 6]


def test_what_a_restored_publisher_keeps_for_its_subscribers_is_bounded_too():
    publisher = _publisher()
    publisher.retain_bytes = 4 * MIB
    publisher._retain_bytes_given = True  # (as publish(retain_bytes=...))
    for epoch in range(1, 6):  # restored from a snapshot: kept for its subscribers coming back
        publisher._released.append(_Epoch(epoch, 0.0, [(1, b"")], 3 * MIB))
    publisher._restored = (1, 5)
    _out(publisher, 6, 3 * MIB)
    assert [e.number for e in publisher._released] == [6]


def test_retain_bytes_alone_needs_a_state_dir():
    """retain_bytes without retain bounds what a job with a state_dir keeps
    for its subscribers away (it was refused when the flow was built);
    in a job without one it bounds nothing, said when the job starts."""
    from kernel import Dataflow, run

    flow = Dataflow()
    flow.from_iterable(range(3)).publish("t", retain_bytes=MIB)  # (accepted: the state_dir is the run's)
    said = "retain_bytes bounds what retain=N keeps, and what a job with a state_dir keeps for its " \
        "subscribers away: give retain, or a state_dir"
    with pytest.raises(Exception, match=said):
        run(flow)
