"""Session 39 review: retain_bytes bounds what a publisher with snapshots
keeps only for its subscribers away (README: "of all such epochs at most
retain_bytes"). The epochs a connected subscriber has not acknowledged are
kept whatever their size, and were counted too: a connected subscriber
behind by more than retain_bytes made the publisher drop the epochs kept
for a subscriber away, though they were well within the bound. Unit-level,
as test_session39_kept_bytes.py."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_publisher_memory import _Link, _publisher
from test_session39_kept_bytes import MIB, _away, _out

from kernel.topics._publish import _Subscriber


def test_what_a_connected_subscriber_lacks_does_not_count_against_retain_bytes():
    publisher = _publisher()
    publisher.retain_bytes = 10 * MIB
    publisher._retain_bytes_given = True  # (as publish(retain_bytes=...))
    _away(publisher, 0)  # away, having epoch 0
    sub = _Subscriber(_Link(), "c")  # connected and slow: its credit says it has epoch 2
    publisher._start(sub, 2)
    publisher.subscribers.append(sub)
    for epoch in range(1, 7):  # 3 MiB each: 1 and 2 kept for the subscriber away (6 MiB), 3-6 for both
        _out(publisher, epoch, 3 * MIB)
    assert [e.number for e in publisher._released] == [1, 2, 3, 4, 5, 6], \
        "epochs kept for the subscriber away within retain_bytes were dropped"
    assert publisher._resume(_Subscriber(_Link(), "b"), 0)  # it comes back: it misses nothing
    # past the bound, the oldest of those go, as before
    _out(publisher, 7, 3 * MIB)
    sub.has = 4  # (it acknowledged 3 and 4: 1-4, 12 MiB, are kept for the away only)
    publisher._prune()
    assert [e.number for e in publisher._released] == [2, 3, 4, 5, 6, 7]
