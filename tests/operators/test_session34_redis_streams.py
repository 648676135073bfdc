"""Session 34's review of the Redis Streams connector, against a real
`redis-server` (tests/_redis_server.py): each test was seen failing before
its fix."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import redis
import redis.asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernel import Dataflow, OperatorError, run, run_async

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def replies(monkeypatch):
    """Each XREAD reply the source got, as {stream: entries} (a spy on
    redis-py's client: the call goes to the server as it is)."""
    sizes: list[dict] = []
    xread = redis.asyncio.Redis.xread

    async def spy(self, *args, **kwargs):
        reply = await xread(self, *args, **kwargs)
        sizes.append({_name(name): len(entries) for name, entries in reply})
        return reply

    monkeypatch.setattr(redis.asyncio.Redis, "xread", spy)
    return sizes


def _name(name) -> str:
    return name.decode() if isinstance(name, bytes) else name


def total(reply: dict) -> int:
    return sum(reply.values())


def fill(client, stream: str, count: int) -> list[str]:
    pipe = client.pipeline(transaction=False)
    for n in range(count):
        pipe.xadd(stream, {"n": n})
    return list(pipe.execute())


# -- many streams on one kernel ---------------------------------------------------------


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lengths=st.lists(st.integers(0, 40), min_size=12, max_size=24), batch_size=st.integers(3, 30))
@pytest.mark.parametrize("cores", [1, 2, 3])
def test_a_kernel_reading_many_streams_holds_about_a_batch_per_reply(client, url, replies, cores,
                                                                     lengths, batch_size):
    """XREAD's COUNT is per stream: with COUNT batch_size, a kernel reading
    20 streams got up to 20 batches in one reply (the README: a buffer of at
    most two). Each stream is asked for its share now; every entry still
    comes once, in order per stream, as XRANGE has them."""
    client.flushdb()
    replies.clear()
    names = [f"s{i}" for i in range(len(lengths))]
    expected = {name: fill(client, name, length) for name, length in zip(names, lengths) if length}
    flow = Dataflow()
    out = flow.from_redis_stream(url, names, batch_size=batch_size).map(lambda e: (e.stream, e.id)).collect()
    run(flow, cores=cores)
    got: dict[str, list] = {}
    for stream, entry_id in out.items:
        got.setdefault(stream, []).append(entry_id)
    assert got == expected
    per_kernel = -(-len(names) // cores)  # the most streams one kernel reads
    assert max(map(total, replies), default=0) <= max(batch_size, per_kernel)


async def test_a_busy_stream_among_idle_ones_is_read_in_batches(client, url, replies):
    """Followed: one stream with 2,000 entries among 40 that get one entry
    each while it is read. Asked for a 40th of a batch each, the busy one
    came 25 entries a round trip (40 times slower, measured): it comes in
    batches, and a reply holds at most one, the idle streams' entries too."""
    names = [f"s{i}" for i in range(40)]
    for name in names[1:]:
        client.xadd(name, {"n": "old"})
    fill(client, "s0", 2000)
    order: list[str] = []
    done = asyncio.Event()

    def note(entry):
        order.append(entry.stream)
        if len(order) == 2000 + 2 * 39:
            done.set()

    flow = Dataflow()
    flow.from_redis_stream(url, names, follow=True, batch_size=1000).inspect(note).sink(lambda e: None)
    task = asyncio.ensure_future(run_async(flow))
    try:
        deadline = time.monotonic() + 10
        while order.count("s0") < 100:  # the busy stream is being read: add one entry to each other
            assert time.monotonic() < deadline and not task.done(), "the busy stream was not read"
            await asyncio.sleep(0.001)
        writer = redis.asyncio.Redis.from_url(url)
        try:
            for name in names[1:]:
                await writer.xadd(name, {"n": "new"})
        finally:
            await writer.aclose()
        await asyncio.wait_for(done.wait(), 10)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert order.count("s0") == 2000
    assert max(map(total, replies)) <= 1000
    # a few round trips, not the 80 that 2,000 entries at a share of 25 take
    assert sum(1 for reply in replies if "s0" in reply) < 10


# -- arguments Redis refuses, refused when the flow is built ---------------------------------


@pytest.mark.parametrize("start", [
    "18446744073709551616", "5-18446744073709551616",  # a part past 2**64 - 1
    "\uff15", "1\u0663-0",  # digits, but not ASCII ones (fullwidth 5, Arabic-Indic 3)
])
def test_a_start_id_redis_cannot_take_is_refused_when_the_flow_is_built(start):
    """Such an id passed the check (`\\d` takes any Unicode digit; no bound
    on the parts): a followed read failed at run time ('Invalid stream ID'),
    a bounded one from past 2**64 read nothing and said nothing."""
    with pytest.raises(ValueError, match="start must be an entry id"):
        Dataflow().from_redis_stream("redis://127.0.0.1:1/0", "s", start=start)


def test_the_largest_start_id_is_taken(client, url):
    client.xadd("s", {"n": 1})
    flow = Dataflow()
    out = flow.from_redis_stream(url, "s", start="18446744073709551615-18446744073709551615").collect()
    run(flow)
    assert out.items == []


def test_a_maxlen_past_what_redis_takes_is_refused_when_the_flow_is_built(client, url):
    """MAXLEN is a signed 64-bit count: 2**63 was taken, and the run failed
    at its first XADD ('value is not an integer or out of range')."""
    stream = Dataflow().from_iterable([{"n": 1}])
    with pytest.raises(ValueError, match="maxlen must be a positive int"):
        stream.to_redis_stream(url, "s", maxlen=2**63)
    flow = Dataflow()
    flow.from_iterable([{"n": 1}]).to_redis_stream(url, "s", maxlen=2**63 - 1)
    run(flow)
    assert client.xlen("s") == 1


# -- RESP3 --------------------------------------------------------------------------------


@pytest.mark.parametrize("decode", [True, False])
@pytest.mark.parametrize("cores", [1, 2])
def test_a_url_asking_for_resp3_reads_every_entry(client, url, cores, decode):
    """`?protocol=3`, which redis-py takes in a URL, gives XREAD's reply as a
    map: the reader failed on it with a bare 'not enough values to unpack'."""
    expected = {name: fill(client, name, 30) for name in ("a", "b", "c")}
    flow = Dataflow()
    out = (flow.from_redis_stream(f"{url}?protocol=3", ["a", "b", "c"], batch_size=7, decode=decode)
           .map(lambda e: (e.stream, e.id, e.fields)).collect())
    run(flow, cores=cores)
    n = b"n" if not decode else "n"
    assert {name: [(i, f[n]) for s, i, f in out.items if s == name] for name in expected} == {
        name: [(i, str(k).encode() if not decode else str(k)) for k, i in enumerate(ids)]
        for name, ids in expected.items()}


async def test_a_followed_read_over_resp3_waits_and_reads_what_comes(client, url):
    """Over RESP3 an XREAD that waited in vain answers an empty map: the
    followed read goes on waiting, and reads what comes."""
    seen: list[str] = []
    enough = asyncio.Event()

    def note(entry):
        seen.append(entry.fields["n"])
        if len(seen) == 3:
            enough.set()

    flow = Dataflow()
    flow.from_redis_stream(f"{url}?protocol=3", ["s", "t"], follow=True).inspect(note).sink(lambda e: None)
    task = asyncio.ensure_future(run_async(flow))
    writer = redis.asyncio.Redis.from_url(url)
    try:
        await writer.config_resetstat()
        deadline = time.monotonic() + 10
        # an XREAD done (Redis counts a blocked one when it returns): one waited in vain
        while (await writer.info("commandstats")).get("cmdstat_xread", {}).get("calls", 0) < 1:
            assert time.monotonic() < deadline and not task.done(), "no XREAD of the source returned"
            await asyncio.sleep(0.005)
        for n in range(3):
            await writer.xadd("t", {"n": n})
        await asyncio.wait_for(enough.wait(), 10)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await writer.aclose()
    assert seen == ["0", "1", "2"]


# -- the URL's own options --------------------------------------------------------------------


@pytest.mark.parametrize("value", ["true", "false", "1"])
def test_a_url_that_sets_decode_responses_is_refused_when_the_flow_is_built(value):
    """redis-py lets the URL's decode_responses override the client's (as a
    str: "false" is true): a decode=False source got str ids and its reader
    failed with a bare AttributeError ('str' object has no attribute 'decode')."""
    with pytest.raises(ValueError, match="sets decode_responses, which the source sets itself") as info:
        Dataflow().from_redis_stream(f"redis://user:hunter2@127.0.0.1:1/0?decode_responses={value}", "s",
                                     decode=False)
    assert "hunter2" not in str(info.value)


def test_the_sink_takes_a_url_that_sets_decode_responses(client, url):
    """The sink reads nothing back but ids: the option changes nothing there."""
    flow = Dataflow()
    flow.from_iterable([{"n": 1}, {"n": 2}]).to_redis_stream(f"{url}?decode_responses=true", "out")
    run(flow)
    assert [fields for _id, fields in client.xrange("out")] == [{"n": "1"}, {"n": "2"}]


@pytest.mark.parametrize("option", ["socket_timeout", "socket_connect_timeout"])
@pytest.mark.parametrize("step", ["from_redis_stream", "to_redis_stream"])
def test_a_url_that_sets_a_socket_timeout_is_refused_when_the_flow_is_built(option, step):
    """redis-py lets the URL's socket timeouts override the connector's
    own (from timeout=, and a followed source's block= on top): a followed
    source with ?socket_timeout=0.05 failed its first XREAD that waited for
    entries, "TimeoutError: Timeout reading from ... is a Redis server
    running?", with the server up."""
    url = f"redis://user:hunter2@127.0.0.1:1/0?{option}=0.05"
    flow = Dataflow()
    with pytest.raises(ValueError) as info:
        if step == "from_redis_stream":
            flow.from_redis_stream(url, "s", follow=True)
        else:
            flow.from_iterable([{"n": 1}]).to_redis_stream(url, "out")
    assert str(info.value) == (
        f"{step}: 'redis://user:***@127.0.0.1:1/0?{option}=0.05' sets {option}, which the connector sets "
        "itself (from timeout=, and a followed source's blocking reads wait longer): leave it out of the "
        "URL and give timeout= (seconds)")


# -- a key the URL's user may not use (ACL) ---------------------------------------------------


@pytest.fixture
def user_of_a_streams(client, url):
    """The URL of a user whose ACL keys are a* only (every command); then
    without XLEN too, which the source tries each stream with."""
    def user(name, *rules):
        client.execute_command("ACL", "SETUSER", name, "reset", "on", ">pw", "~a*", "+@all", *rules)
        users.append(name)
        return url.replace("redis://", f"redis://{name}:pw@")

    users: list = []
    yield user
    for name in users:
        client.execute_command("ACL", "DELUSER", name)


@pytest.mark.parametrize("follow", [False, True])  # the ends by EVAL (XREVRANGE); XREAD at once
def test_a_stream_the_user_may_not_read_is_named(client, url, user_of_a_streams, follow):
    """Redis says NOPERM "this user has no permissions to access one of
    the keys used as arguments" of a command over several streams: the
    error named them all (stream ['a1', 'b1', 'a2']), so the user could
    not tell which their ACL leaves out. The source asks each stream alone
    (XLEN) and names the one."""
    for stream in ("a1", "b1", "a2"):
        client.xadd(stream, {"n": "1"})
    flow = Dataflow()
    user = user_of_a_streams("reader1")
    flow.from_redis_stream(user, ["a1", "b1", "a2"], follow=follow).collect()
    with pytest.raises(OperatorError) as info:
        run(flow)
    shown = url.replace("redis://", "redis://reader1:***@")
    assert info.value.function == f"{'XREAD' if follow else 'XREVRANGE'} on {shown} stream 'b1'"
    assert info.value.error == ("NoPermissionError: this user has no permissions to access one of the keys "
                                "used as arguments")
    assert info.value.hint == (f"the server's ACL does not let the user of {shown} read the key 'b1' "
                               "(ACL GETUSER shows its key patterns)")


def test_where_no_stream_alone_can_be_asked_the_error_says_redis_names_none(client, url, user_of_a_streams):
    """A user who may not run XLEN either: the error says plainly that it
    is one of the streams, Redis not saying which."""
    for stream in ("a1", "b1"):
        client.xadd(stream, {"n": "1"})
    flow = Dataflow()
    user = user_of_a_streams("reader2", "-xlen")
    flow.from_redis_stream(user, ["a1", "b1"]).collect()
    with pytest.raises(OperatorError) as info:
        run(flow)
    shown = url.replace("redis://", "redis://reader2:***@")
    assert info.value.function == f"XREVRANGE on {shown} stream ['a1', 'b1']"
    assert info.value.hint == (f"the server's ACL does not let the user of {shown} read one of the keys "
                               "['a1', 'b1'] (Redis does not say which; ACL GETUSER shows its key patterns)")


def test_a_stream_the_user_may_not_write_is_named(client, url, user_of_a_streams):
    flow = Dataflow()
    user = user_of_a_streams("writer1")
    flow.from_iterable([{"n": 1}]).to_redis_stream(user, "b9")
    with pytest.raises(OperatorError) as info:
        run(flow)
    shown = url.replace("redis://", "redis://writer1:***@")
    assert info.value.function == f"XADD on {shown} stream 'b9'"
    assert info.value.hint == (f"the server's ACL does not let the user of {shown} write the key 'b9' "
                               "(ACL GETUSER shows its key patterns)")
    assert client.exists("b9") == 0


# -- a run that fails while a reader's XREAD is under way ------------------------------------

FAILING_RUNS = textwrap.dedent(
    """
    import sys
    from kernel import Dataflow, KernelProcessError, run

    def fail_at_3000(entry):
        if entry.fields["n"] == "3000":
            raise ValueError("bad entry")
        return entry

    for attempt in range(int(sys.argv[2])):
        for cores in (2, 3):
            flow = Dataflow()
            flow.from_redis_stream(sys.argv[1], ["s", "t", "u"]).map(fail_at_3000).collect()
            try:
                run(flow, cores=cores)
            except KernelProcessError as exc:
                assert "bad entry" in str(exc), exc
            else:
                raise AssertionError("the run did not fail")
            print(attempt, cores, flush=True)
    """
)


def test_a_run_that_fails_while_its_reader_reads_ends(client, url, tmp_path):
    """Kernel 0's map fails at entry 3,000 of 50,000 while its reader reads
    on: the run must end with the error. One run in a few hung (kernel 0's
    process never exited: its reader, cancelled, got its XREAD's reply all
    the same and waited for buffer space for ever). 30 runs, in a process
    of their own, killed if they have not ended in 60 s."""
    fill(client, "s", 50_000)
    script = tmp_path / "failing_runs.py"
    script.write_text(FAILING_RUNS)
    process = subprocess.Popen([sys.executable, str(script), url, "15"], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # (its kernels' processes too)
        output, _ = process.communicate()
        pytest.fail(f"a failing run hung; the runs that ended:\n{output}")
    assert process.returncode == 0, output
    assert len(output.splitlines()) == 30
