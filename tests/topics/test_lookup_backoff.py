"""A lookup waiting for a topic (a subscriber before its publisher, or one
waiting for a lost publisher's successor with on_lost="wait", a service
client) asks the coordinator at once, then after pauses doubling from
LOOKUP_EVERY up to LOOKUP_MOST: it asked every 50 ms for as long as it
waited, for ever with on_lost="wait". Against the real coordinator; the
lookups are counted as they are sent (the transport is the real one)."""

from __future__ import annotations

import asyncio
import itertools

import pytest
from test_services_robust import run, where  # noqa: F401  (fixtures and helpers)
from test_topics import coordinator, system  # noqa: F401

from kernel.topics import TopicError, _directory
from kernel.topics._directory import LOOKUP_EVERY, LOOKUP_MOST, Directory, lookup_pauses


def test_the_pauses_double_from_the_first_up_to_the_most():
    pauses = list(itertools.islice(lookup_pauses(), 12))
    assert LOOKUP_EVERY / 2 <= pauses[0] <= LOOKUP_EVERY  # a topic published soon after: found as soon
    for n, pause in enumerate(pauses):
        span = min(LOOKUP_EVERY * 2 ** n, LOOKUP_MOST)
        assert span / 2 <= pause <= span, pauses
    assert LOOKUP_MOST == 1.0 and all(p >= 0.5 for p in pauses[5:]), pauses


def test_a_lookup_that_waits_asks_the_coordinator_less_and_less_often(where, monkeypatch):  # noqa: F811
    sent: list[float] = []
    request = Directory._request

    async def counted(self, op, fields, until=None):
        if op == "topic_lookup":
            sent.append(asyncio.get_running_loop().time())
        return await request(self, op, fields, until)

    monkeypatch.setattr(Directory, "_request", counted)
    host, port = where.rsplit(":", 1)

    async def scenario():
        directory = Directory((host, int(port)), _directory.secret())
        try:
            with pytest.raises(TopicError) as raised:
                await directory.lookup("never-published", 3.0)
            assert str(raised.value) == ("no topic 'never-published' was published within 3 s (is the "
                                         "publishing job running, with the same coordinator?)")
        finally:
            await directory.close()

    run(scenario)
    # every 50 ms it was about 60 lookups; doubling up to 1 s, 12 at most
    gaps = [b - a for a, b in itertools.pairwise(sent)]
    assert 5 <= len(sent) <= 12, gaps
    assert gaps[-2] > 0.4, gaps  # (the last gap is cut at the deadline)
