"""Review of the Redis Streams connector: failing tests for bugs found (each
one names the input, what happens and what should)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis
from kernel.operators._redis import RedisStreamSource

from kernel import Dataflow, OperatorError, run, run_async

REPO = Path(__file__).resolve().parents[2]
@pytest.fixture
def client(url):
    connection = redis.Redis.from_url(url)
    connection.flushdb()
    yield connection
    connection.close()


@pytest.mark.parametrize("start", ["last", "$"])
def test_a_last_entry_not_utf8_that_is_never_read_does_not_fail_the_run(client, url, start):
    """The source takes a stream's last id with XREVRANGE ... COUNT 1, which
    also returns (and, with decode=True, decodes) that entry's fields: a
    last entry that is not UTF-8 fails the run with UnicodeDecodeError
    (and the hint "decode=False...") though the read starts after it and
    never reads it. It should read nothing and end (ids only: XREVRANGE
    with decode off, or the XINFO/XREAD "+" id)."""
    client.xadd("s", {"n": "1"})
    last = client.xadd("s", {"raw": b"\xff\xfe"}).decode()
    flow = Dataflow()
    out = flow.from_redis_stream(url, "s", start=last if start == "last" else "$").collect()
    run(flow)
    assert out.items == []


async def test_a_followed_read_from_dollar_after_a_binary_entry_reads_what_comes_next(client, url):
    """follow=True, start="$", decode=True on a stream whose last entry is
    binary (written by another producer): only new UTF-8 entries are to be
    read, but resolving "$" decodes the old binary entry and the run fails."""
    client.xadd("s", {"raw": b"\xff"})
    seen = asyncio.Event()
    flow = Dataflow()
    flow.from_redis_stream(url, "s", follow=True, start="$").inspect(lambda e: seen.set()).sink(
        lambda e: None)
    task = asyncio.ensure_future(run_async(flow))
    writer = redis.asyncio.Redis.from_url(url)
    try:
        deadline = asyncio.get_running_loop().time() + 5
        while not any(c.get("cmd") == "xread" for c in await writer.client_list()):
            if task.done():
                task.result()  # raises the run's error
            assert asyncio.get_running_loop().time() < deadline, "the source never blocked in XREAD"
            await asyncio.sleep(0.002)
        await writer.xadd("s", {"n": "ok"})
        await asyncio.wait_for(seen.wait(), 5)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await writer.aclose()


@pytest.mark.parametrize("follow", [False, True])
async def test_a_key_of_another_type_among_several_streams_is_named_alone(client, url, follow):
    """Streams ["ok", "str"], "str" a string key: the hint says "the key
    ['ok', 'str'] holds another type than a stream" (the whole list, as if
    it were one key); with follow=True (XREAD, whose WRONGTYPE reply names
    no key) nothing in the error says which key it is. It should name
    'str' alone."""
    client.xadd("ok", {"n": 1})
    client.set("str", "x")
    flow = Dataflow()
    flow.from_redis_stream(url, ["ok", "str"], follow=follow).sink(lambda e: None)
    with pytest.raises(OperatorError) as info:
        await asyncio.wait_for(run_async(flow), 10)
    message = str(info.value)
    assert "the key 'str' holds another type than a stream" in message, message


def test_a_bounded_read_from_dollar_reads_nothing_added_while_it_resolves(client, url, monkeypatch):
    """follow=False, start="$": the read is to end at the last entry present
    when the run started, and start after it: nothing to read. But "$" and
    the ends are taken by two XREVRANGE round trips (`_resolve_start`): an
    entry added between them (here added deterministically right after the
    first) is read. Both should come from one look (one pipeline)."""
    client.xadd("s", {"n": "before"})
    original = RedisStreamSource._last_ids
    calls = []

    async def last_ids(self, client_, streams):
        got = await original(self, client_, streams)
        calls.append(streams)
        if len(calls) == 1:  # another producer adds an entry between the two looks
            await client_.xadd("s", {"n": "during"})
        return got

    monkeypatch.setattr(RedisStreamSource, "_last_ids", last_ids)
    flow = Dataflow()
    out = flow.from_redis_stream(url, "s", start="$").map(lambda e: e.fields["n"]).collect()
    run(flow)
    assert out.items == []


@pytest.mark.parametrize("stream", [["a", 1], [None], None, [b"a"]])
def test_a_stream_list_with_a_name_that_is_not_a_str_is_refused_clearly(stream):
    """The step's label is built with ','.join(stream) before the arguments
    are checked: a bad name raises a bare TypeError from str.join
    ("sequence item 1: expected str instance, int found") instead of the
    connector's ValueError that names the argument."""
    with pytest.raises(ValueError, match="from_redis_stream needs a stream name"):
        Dataflow().from_redis_stream("redis://127.0.0.1:1/0", stream)


def test_an_iterator_of_stream_names_is_not_consumed_by_the_label():
    """iter(["a", "b"]): the label's ','.join consumes it, and the check that
    follows sees an empty list and refuses it ("needs a stream name")."""
    source = Dataflow().from_redis_stream("redis://127.0.0.1:1/0", iter(["a", "b"]))
    assert source.node.resume_record == ["a", "b"]


@pytest.mark.parametrize("start", ["0", "$"])
def test_a_user_whose_acl_allows_no_eval_still_reads(client, url, start):
    # the last ids come from one script; a user without EVAL gets them from
    # XREVRANGE in one transaction, as before
    for n in range(5):
        client.xadd("s", {"n": str(n)})
    client.execute_command("ACL", "SETUSER", "reader", "on", ">pw", "~*", "+@all", "-eval", "-evalsha")
    flow = Dataflow()
    out = flow.from_redis_stream(url.replace("redis://", "redis://reader:pw@"), "s", start=start).collect()
    run(flow)
    assert [e.fields["n"] for e in out.items] == ([] if start == "$" else ["0", "1", "2", "3", "4"])
