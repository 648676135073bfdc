"""A publisher with snapshots keeps the epochs a dropped subscriber lacks,
for a while (`_absent` in `Publish._prune`), and no more: a unit-level test
of its bookkeeping, without sockets (the end-to-end cases are in
test_topics.py)."""

from __future__ import annotations

import asyncio
from collections import deque

from kernel.topics._publish import DEFAULT_RETAIN_BYTES, RESUME_EPOCHS, Publish, _Epoch, _Subscriber


class _Link:
    window = 100

    @staticmethod
    def credit(channel: int) -> int:
        return _Link.window  # nothing acknowledged yet: no marker's credit has come back


def _publisher() -> Publish:
    publisher = Publish.__new__(Publish)
    publisher.topic, publisher.partition, publisher.watermark = "t", 0, float("-inf")
    publisher.subscribers, publisher.snapshots, publisher.epoch = [], True, 0
    publisher._released, publisher._restored, publisher._absent, publisher.paused = deque(), None, [], False
    publisher.retain_bytes = DEFAULT_RETAIN_BYTES
    return publisher


def test_a_subscriber_dropped_again_and_again_before_any_credit_keeps_only_recent_epochs():
    """A subscriber that comes back (after = the last epoch it has) and is
    dropped each time before its first marker's credit comes back: the
    publisher keeps what it lacks, the epochs after it, for RESUME_EPOCHS
    epochs, and prunes the rest (every epoch was kept while the drops went
    on: 46, 96, 146, 196 at epochs 50 to 200)."""
    publisher = _publisher()
    kept = []
    for epoch in range(1, 201):
        publisher.epoch = epoch
        publisher._released.append(_Epoch(epoch, 0.0, [(1, b"x" * 1000)], 1005))
        if epoch % 5 == 0:  # it comes back, having every epoch up to the last, and is dropped
            sub = _Subscriber(_Link(), "b")
            publisher._start(sub, epoch - 1)
            publisher.subscribers.append(sub)
            publisher._forget(sub)
        publisher._prune()
        kept.append(len(publisher._released))
    assert max(kept) <= RESUME_EPOCHS + 1, kept  # the last RESUME_EPOCHS or so, never growing
    # what it lacked when dropped stays for RESUME_EPOCHS epochs
    publisher = _publisher()
    for epoch in range(1, 4):
        publisher._released.append(_Epoch(epoch, 0.0, [], 0))
    publisher.epoch = 3
    sub = _Subscriber(_Link(), "b")
    publisher._start(sub, 1)  # it has epoch 1
    publisher.subscribers.append(sub)
    publisher._forget(sub)
    for epoch in range(3, 3 + RESUME_EPOCHS):
        publisher.epoch = epoch
        publisher._prune()
        assert [e.number for e in publisher._released] == [2, 3]
    publisher.epoch = 3 + RESUME_EPOCHS
    publisher._prune()
    assert list(publisher._released) == []


async def test_a_subscriber_dropped_as_too_slow_is_kept_nothing_for():
    """slow="disconnect" drops a subscriber to bound the publisher's memory:
    no epochs are kept for it to come back to (a dropped connection's are)."""

    class _Socket:
        async def close(self, **reason) -> None:
            pass

    publisher = _publisher()
    publisher.slow, publisher.dropped, publisher._closing = "disconnect", 0, set()
    publisher.max_queue = 1 << 20
    publisher._released.append(_Epoch(1, 0.0, [], 0))
    publisher.epoch = 1
    for too_slow in (True, False):
        sub = _Subscriber(_Link(), "b")
        sub.link.ws = _Socket()
        publisher._start(sub, 0)
        publisher.subscribers.append(sub)
        if too_slow:
            publisher._too_slow(sub)
            assert publisher._absent == []
        else:
            publisher._forget(sub)
            assert publisher._absent == [(0, 1 + RESUME_EPOCHS)]
    await asyncio.gather(*publisher._closing)


def test_a_subscribers_after_counts_only_within_its_own_stream():
    """A publisher with snapshots takes a returning subscriber's `after`
    only for epochs of its own stream (its lineage): one started afresh
    ignores an `after` of the stream before it. A snapshot of an earlier
    version has no lineage: unknown, every `after` is taken (as before), and
    so at every resume from that same snapshot (a new id at each would make
    the second resume take its subscribers for another stream's: 400
    readings lost in a review's run)."""
    publisher = _publisher()
    publisher.lineage = "first"
    assert publisher._after({"after": 7, "lineage": "first"}, "b") == 7
    assert publisher._after({"after": 7, "lineage": "another"}, "b") is None
    assert publisher._after({"after": 7}, "b") == 7  # a subscriber of an earlier version
    snapshot = {"epochs": [(5, [(1, b"x")])], "lineage": "first"}
    for old_format in (False, True):
        resumed = _publisher()
        resumed.lineage, resumed._pending, resumed._last_epoch = "new run", deque(), 0
        resumed.restore({"epochs": snapshot["epochs"]} if old_format else snapshot)
        assert resumed.lineage == (None if old_format else "first")
        assert resumed._after({"after": 5, "lineage": "first"}, "b") == 5
    assert Publish.rescale(publisher, [None, snapshot], None) == {"epochs": [], "lineage": "first"}
    assert Publish.rescale(publisher, [{"epochs": []}], None) == {"epochs": [], "lineage": None}
