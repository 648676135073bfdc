"""A dial's error says its time to the hundredth of a second: a command's
time left (`logs --follow` reconnecting, 1.99622 s) was said to the
microsecond ("could not reach ... within 1.99622 s")."""

import socket

import pytest
from kernel.net._links import LinkError, connect


async def test_a_dial_that_reaches_no_one_says_its_time_rounded():
    with socket.socket() as taken:  # (a port no one listens on: bound, never listening)
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        with pytest.raises(LinkError) as caught:
            await connect(f"http://127.0.0.1:{port}", b"s" * 32, 1, timeout=0.2999613)
    assert "within 0.3 s:" in str(caught.value), str(caught.value)
