"""Regression tests from a review of clusters (issue 6): each test here
failed when written and documents one bug.

* a record that has to wrap around a ring (after a big one) hangs the run
  forever (the consumer skips the ring's WRAP marker without waking the
  producer that waits for that space);
* link credit: a frame larger than what a channel has left, after frames
  that were consumed but not yet granted back (less than half a window),
  waits forever;
* dialling a peer whose port accepts TCP but never answers ignores the
  start-up timeout;
* a key whose pickle depends on the hash seed (a frozen dataclass holding a
  frozenset) goes to different kernels on processes with other seeds: the
  results are split.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import socket
import time
from pathlib import Path

import pytest
from _ports import free_ports
from _procs import run_cli_processes

from kernel import Dataflow, run

SECRET = "cluster-review-secret"
REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.usefixtures("no_leaks")


def _member(build, index, peers, options, out) -> None:
    try:
        flow, handles = build()
        run(flow, process_id=index, peers=peers, secret=SECRET, **options)
        out.send(("ok", [sorted(map(repr, h.items)) for h in handles]))
    except BaseException as exc:
        out.send(("error", type(exc).__name__, str(exc)))
    finally:
        out.close()


def run_members(build, indexes, peers, deadline: float, options=None) -> dict:
    """Fork one member per index; their outcomes, or 'hung' for those that
    did not end within `deadline` seconds (killed then: their kernels and
    relay die with them)."""
    context = multiprocessing.get_context("fork")
    members = []
    for i in indexes:
        receiver, sender = context.Pipe(duplex=False)
        child = context.Process(target=_member, args=(build, i, peers, options or {}, sender))
        child.start()
        sender.close()
        members.append((i, child, receiver))
    outcomes = {}
    end = time.monotonic() + deadline
    try:
        for i, _, pipe in members:
            outcomes[i] = pipe.recv() if pipe.poll(max(0.05, end - time.monotonic())) else ("hung",)
    finally:
        for _, child, pipe in members:
            if child.is_alive():
                child.kill()
            child.join(10)
            pipe.close()
    return outcomes


# -- a frame that wraps around a ring ------------------------------------------------------


def _big_then_bigger():
    """Kernel 0 (process 0) sends kernel 1 (process 1) a 2.2 MB record, then
    a 3 MB one: the second does not fit at the ring's end, so the producer
    publishes a WRAP marker and waits for space. The consumer pops the
    marker (no frame behind it: pop() returns None), so `got` stays 0 and
    the waiting producer is never woken (net/_transport.py _Reader: `if
    got:` guards the producer bells; the relay's _pump has the same gap).
    A single process with cores=2 hangs the same way."""
    flow = Dataflow("wrap")
    items = ["x" * 2_200_000, "-", "y" * 3_000_000, "-"]
    out = (flow.from_iterable(items, batch_size=1)
           .key_by(lambda s: 1 if s[0] in "xy" else 0)  # key 1: kernel 1
           .map(lambda kv: (kv[0], len(kv[1]))).collect())
    return flow, [out]


def test_a_record_that_wraps_around_a_ring_does_not_hang_the_cluster():
    peers = ",".join(f"127.0.0.1:{p}" for p in free_ports(2))
    outcomes = run_members(_big_then_bigger, (0, 1), peers, deadline=12.0)
    assert outcomes[0] == ("ok", [["(0, 1)", "(0, 1)", "(1, 2200000)", "(1, 3000000)"]]), outcomes
    assert outcomes[1] == ("ok", [[]]), outcomes


# -- link credit ------------------------------------------------------------------------------


def test_a_big_frame_after_ungranted_credit_is_sent():
    """net/_links.py: credit comes back half a window at a time, so up to
    half a window of consumed bytes may stay ungranted; a later frame larger
    than the credit left (window minus those bytes) waits for credit that
    never comes (`_send_when_credited` waits for min(size, window)). Frames
    up to the ring size (4 MiB, the window) do cross a cluster's links."""
    from kernel.net._links import Link, LinkServer, dial

    async def scenario():
        accepted: dict = {}
        received: list[int] = []

        def on_frame_for(_peer):
            def on_frame(channel, _kind, body):
                received.append(len(body))
                accepted["link"].consumed(channel, Link.size(body))

            return on_frame

        server = LinkServer("127.0.0.1", 0, SECRET, 0, {7}, on_frame_for,
                            on_link=lambda link: accepted.__setitem__("link", link))
        await server.start()
        link, session = await dial(f"http://127.0.0.1:{server.port}", SECRET, 1, {7}, lambda *a: None)
        reader = asyncio.ensure_future(link.run())
        try:
            await link.send(7, 1, b"a" * 1_900_000)  # consumed, under half a window: not granted back
            try:
                await asyncio.wait_for(link.send(7, 1, b"b" * 3_000_000), 4.0)
            except TimeoutError:
                pass
            for _ in range(40):
                if len(received) == 2:
                    break
                await asyncio.sleep(0.05)
            return received, link.credit(7)
        finally:
            reader.cancel()
            await link.close()
            await session.close()
            await server.stop()

    received, credit = asyncio.run(scenario())
    assert received == [1_900_000, 3_000_000], f"the 3 MB frame never went (credit left: {credit})"


# -- start-up --------------------------------------------------------------------------------


def _tiny():
    flow = Dataflow("tiny")
    out = flow.from_iterable(range(10)).collect()
    return flow, [out]


def test_a_peer_port_that_accepts_but_never_answers_respects_the_startup_timeout():
    """net/_links.py dial(): `timeout` only bounds the retries; the
    websocket upgrade (and the handshake after it) is awaited with no
    deadline, so a port held by something that accepts TCP and says nothing
    (another program, a stopped process, a half-open proxy) hangs the run
    far past --startup-timeout (aiohttp's own 5-minute default)."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    try:
        peers = f"127.0.0.1:{silent.getsockname()[1]},127.0.0.1:{free_ports(1)[0]}"
        started = time.monotonic()
        outcomes = run_members(_tiny, (1,), peers, deadline=12.0, options={"startup_timeout": 0.5})
    finally:
        silent.close()
    assert outcomes[1][0] == "error", f"still waiting after {time.monotonic() - started:.0f} s: {outcomes}"
    assert "process 0" in outcomes[1][2]
    assert "within 0.5 s: it accepted the connection but never answered" in outcomes[1][2]


# -- key routing across processes --------------------------------------------------------


PIPELINE = '''
from dataclasses import dataclass
from kernel import Dataflow

@dataclass(frozen=True)
class Tag:
    names: frozenset

TAGS = [Tag(frozenset({f"a{i}", f"b{i}", f"c{i}", f"d{i}"})) for i in range(8)]
flow = Dataflow("tags")
(flow.from_iterable(range(800)).key_by(lambda n: TAGS[(n // 2) % 8]).count()
     .map(lambda kv: (sorted(kv[0].names)[0], kv[1])).print())
'''


def test_a_key_whose_pickle_depends_on_the_hash_seed_goes_to_one_kernel(tmp_path):
    """net/_exchange.py _other_hash: keys it does not know are hashed by
    their pickle, and a frozenset inside an object pickles in hash order,
    which PYTHONHASHSEED salts per process. Forked kernels share a seed;
    a cluster's processes, started apart, do not: each process routes the
    same key to another kernel and every count below comes out split."""
    pipeline = tmp_path / "tags.py"
    pipeline.write_text(PIPELINE)
    peers = ",".join(f"127.0.0.1:{p}" for p in free_ports(2))
    codes, outs = run_cli_processes(
        [[str(pipeline), "--process-id", str(i), "--peers", peers, "--startup-timeout", "15"]
         for i in (0, 1)],
        [{**os.environ, "PYTHONPATH": str(REPO), "KERNEL_SECRET": SECRET, "PYTHONHASHSEED": str(i + 1)}
         for i in (0, 1)])
    assert codes == [0, 0], outs
    lines = sorted(line for out, _ in outs for line in out.splitlines())
    assert lines == [str((f"a{i}", 100)) for i in range(8)]
