"""Found by a review of the dashboard's event streams (`_app.EventStreams`):
a stream whose client went away still counted until its next event (up to
an interval: 0.5 s, 1 s for the system's), when its write fails. With
MAX_EVENT_STREAMS open (32 tabs), a tab reloaded (its stream closed, a new
one opened at once) went past the limit and ended another tab's live
stream, the newest of the address holding the most (10 tabs reloaded on a
real server: 10 other tabs' streams ended, each page shown disconnected
till it reconnected). Now a newcomer ends first a stream whose client is
gone (its connection closing)."""

from __future__ import annotations

import asyncio

import pytest
from test_session38_idle_strangers import _a_page_reading, _open, _serve, _until

from kernel.metrics import _app, _server


@pytest.mark.parametrize("which", ["metrics", "system"])
def test_a_tab_reloaded_with_every_stream_open_ends_no_other_tabs_stream(which, monkeypatch):
    """MAX_EVENT_STREAMS tabs reading their streams; ten reloaded, one
    after the other: every tab's stream goes on (an ended one reads to its
    end)."""
    from kernel.system import _dashboard

    # the real interval: a stream whose client is gone counts till its next event
    monkeypatch.setattr(_app, "UPDATE_INTERVAL", 0.5)
    monkeypatch.setattr(_dashboard, "UPDATE_INTERVAL", 0.5)

    async def scenario():
        starting, port = _serve(which)
        runner = await starting
        tabs = [await _a_page_reading(port) for _ in range(_server.MAX_EVENT_STREAMS)]
        try:
            for at in range(10):
                tabs[at][1].close()
                # the server reads the close (a browser's goes before its new request)
                await _until(lambda: _open(runner) < _server.MAX_EVENT_STREAMS, "a close unread")
                tabs[at] = await _a_page_reading(port)
            for at, (reader, _) in enumerate(tabs):  # each gets its next states
                for _ in range(2):
                    try:
                        await asyncio.wait_for(reader.readuntil(b"data: "), 5)
                    except asyncio.IncompleteReadError:
                        pytest.fail(f"tab {at}'s stream was ended")
        finally:
            for _, writer in tabs:
                writer.close()
            await runner.cleanup()

    asyncio.run(scenario())
