"""Session 41 (a new user's walk through the README's "Redis Streams": "a
record that XADD cannot take, is an error naming the stream or the
record"): a dict record with one field XADD cannot take, `{"a": [1, 2]}`,
failed saying `cannot XADD dict to stream 'x'`, though a dict is what
to_redis_stream takes; the error now says which field, and what it holds."""

from __future__ import annotations

import pytest

from kernel import Dataflow, OperatorError, run


@pytest.mark.parametrize(("record", "why"), [
    ({"a": 1, "b": [1, 2]}, "cannot XADD dict to stream 'x': its field 'b' holds a list"),
    ({"ok": True}, "cannot XADD dict to stream 'x': its field 'ok' holds a bool"),
    ({(1, 2): "v"}, "cannot XADD dict to stream 'x': its field name (1, 2) is a tuple"),
    ({}, "cannot XADD dict to stream 'x': it is empty"),
    ("text", "cannot XADD str to stream 'x'\n"),
])
def test_an_unwritable_record_says_what_xadd_cannot_take(url, client, record, why):
    flow = Dataflow("xadd")
    flow.from_iterable([record]).to_redis_stream(url, "x")
    with pytest.raises(OperatorError) as failed:
        run(flow)
    assert why in str(failed.value) + "\n", str(failed.value)
    assert client.xlen("x") == 0
