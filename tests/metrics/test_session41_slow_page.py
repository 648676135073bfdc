"""Session 41: a page on a link slower than its states (a state taking
more than two intervals to arrive) was taken for one whose client stopped
reading: its write was held at each of its events, so its patience ran
out while the state was still on its way, and a stranger's newcomer past
MAX_EVENT_STREAMS ended it, the oldest held, before the stranger's own
streams, never read. A stream whose client took some of what it was sent
since the last tick of the server's timer is now reading
(`EventStreams._tick`)."""

from __future__ import annotations

import asyncio

import pytest
from _metrics_helpers import a_slow_page_served, slow_page_settings, strangers_streams
from test_session40_held_page_review import _serve_big

INTERVAL = 0.05


@pytest.mark.parametrize("which", ["metrics", "system"])
def test_a_page_on_a_link_slower_than_its_states_is_not_taken_for_one_that_stopped_reading(which,
                                                                                         monkeypatch):
    """The slow page's stream first, then a stranger's streams, never read,
    one an interval from 12 addresses, three times MAX_EVENT_STREAMS (4
    here): the page's stream is never ended, and it goes on reading."""
    slow_page_settings(monkeypatch, INTERVAL)

    async def scenario():
        async with a_slow_page_served(_serve_big(which)) as (port, page, read, held):
            while read[0] < 150_000:  # (more than a state: the page is reading, slowly)
                assert not page.done(), "the page's stream ended before any stranger came"
                await asyncio.sleep(0.01)
            before = read[0]
            async for i in strangers_streams(port, INTERVAL, held):
                assert not page.done(), f"the page's stream ended at the stranger's stream {i}"
            assert read[0] > before + 100_000, (before, read[0])  # (it read on meanwhile)

    asyncio.run(scenario())
