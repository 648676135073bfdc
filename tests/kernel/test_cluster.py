"""Clusters on loopback: two and three real processes (each with its kernel
processes and its link relay) linked by websockets give exactly the results
of one process; peers start in any order; a wrong secret, an incompatible
peer, a dead peer, a failing peer end the run with an error that names the
cause; strangers and garbage on the port change nothing."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import inspect
import logging
import mmap
import multiprocessing
import os
import signal
import socket
import struct
import subprocess
import time
import zlib
from collections import Counter
from pathlib import Path

import pytest
from _ports import descendants, free_ports, listener_pid, listening, memory_mb, proportional_mb, wait_until
from _procs import run_cli_processes

from kernel import Dataflow, run, run_async
from operators import Tumbling
from tests._certificates import make_ca, self_signed, sign

SECRET = "cluster-test-secret"
PROMPTLY = 20.0  # seconds: an upper bound, never a synchronisation

pytestmark = pytest.mark.usefixtures("no_leaks")


def peers_for(ports: list[int]) -> str:
    return ",".join(f"127.0.0.1:{port}" for port in ports)


def _member(build, index, peers, cores, options, out, log_path=None) -> None:
    """One process of the cluster (a forked child of the test); with
    `log_path`, its log records (and its kernels' and relay's, forked after
    this) go to that file, one `LEVEL logger: message` a line."""
    if log_path is not None:
        handler = logging.FileHandler(log_path)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logging.getLogger().handlers[:] = [handler]  # not pytest's, inherited by the fork
    try:
        flow, handles = build()
        run(flow, cores=cores, process_id=index, peers=peers, **options)
        out.send(("ok", [sorted(map(repr, h.items)) if h.items else [] for h in handles]))
    except BaseException as exc:
        out.send(("error", type(exc).__name__, str(exc)))
    finally:
        out.close()


class Cluster:
    """N forked processes, each running `run(flow, process_id=i, peers=...)`:
    all started at once, or (`start=False`) each when the test says
    (`start(i)`). With `logs` (a directory), process i logs to
    `logs/process-i.log`."""

    def __init__(self, build, processes: int, cores: int = 1, *, options_for=None, logs=None,
                 start: bool = True) -> None:
        self.context = multiprocessing.get_context("fork")
        self.build, self.cores, self.options_for, self.logs = build, cores, options_for, logs
        self.ports = free_ports(processes)
        self.peers = peers_for(self.ports)
        self.children, self.pipes = [], []
        if start:
            for i in range(processes):
                self.start(i)

    def start(self, i: int) -> None:
        options = {"secret": SECRET, "startup_timeout": 15.0}
        if self.options_for is not None:
            options.update(self.options_for(i))
        log_path = None if self.logs is None else Path(self.logs, f"process-{i}.log")
        receiver, sender = self.context.Pipe(duplex=False)
        child = self.context.Process(target=_member, args=(self.build, i, self.peers, self.cores, options,
                                                           sender, log_path))
        child.start()
        sender.close()
        self.children.append((i, child))
        self.pipes.append((i, receiver))

    def start_listening(self, i: int) -> None:
        """`start(i)`, returning once process i listens for its peers."""
        self.start(i)
        wait_until(lambda: listening(self.ports[i]), what=f"process {i} to listen")

    def outcomes_started_in(self, order) -> dict[int, tuple]:
        """The outcomes of the processes started in `order`, each once the
        one before listens; the cluster closed after."""
        try:
            for i in order[:-1]:
                self.start_listening(i)
            self.start(order[-1])
            return self.outcomes()
        finally:
            self.close()

    def pid(self, i: int) -> int:
        return dict(self.children)[i].pid

    def log(self, i: int) -> list[str]:
        return Path(self.logs, f"process-{i}.log").read_text().splitlines()

    def outcomes(self, timeout: float = 60.0) -> dict[int, tuple]:
        deadline = time.monotonic() + timeout
        results = {}
        for i, pipe in self.pipes:
            left = max(0.1, deadline - time.monotonic())
            assert pipe.poll(left), f"process {i} did not finish within {timeout} s"
            results[i] = pipe.recv()
        return results

    def close(self) -> None:
        for _, child in self.children:
            if child.is_alive():
                os.kill(child.pid, signal.SIGKILL)
            child.join(10)
        for _, pipe in self.pipes:
            pipe.close()


def outcomes_of(build, processes: int, cores: int = 1, **options) -> dict[int, tuple]:
    """Run a cluster to its end: each process's ("ok", results) or ("error", ...)."""
    cluster = Cluster(build, processes, cores, **options)
    try:
        return cluster.outcomes()
    finally:
        cluster.close()


def run_alone(build) -> list:
    flow, handles = build()
    run(flow)
    return [sorted(map(repr, h.items)) for h in handles]


# -- flows --------------------------------------------------------------------------------

LINES = [f"w{i % 97} w{i % 13} shared {'odd' if i % 2 else 'even'}" for i in range(6_000)]
EVENTS = [(f"k{i % 7}", i * 0.01, i % 10) for i in range(5_000)]


def word_count():
    flow = Dataflow("words")
    words = flow.from_iterable(LINES).flat_map(str.split)
    counts = words.filter(lambda w: w != "odd").key_by(lambda w: w).count().collect()
    lengths = words.map(len).key_by(lambda n: n).sum().collect()
    return flow, [counts, lengths]


def windows_and_reduce():
    flow = Dataflow("windows")
    events = flow.from_iterable(EVENTS, timestamp=lambda e: e[1], max_delay=0.5)
    sums = events.key_by(lambda e: e[0]).map_values(lambda e: e[2]).window(Tumbling(1.0)).sum().collect()
    biggest = (flow.from_iterable(range(20_000)).key_by(lambda n: n % 11)
               .reduce(lambda a, b: max(a, b)).collect())
    return flow, [sums, biggest]


def loop_with_rounds():  # issue 20: a loop's rounds agreed across processes
    flow = Dataflow("loops")

    def walk(walks):  # Collatz: (start, now, steps), and a count per round
        on = walks.map(lambda w: (w[0], w[1] // 2 if w[1] % 2 == 0 else 3 * w[1] + 1, w[2] + 1))
        per_round = on.key_by(lambda w: w[0] % 3).count()
        return on.filter(lambda w: w[1] != 1), on.filter(lambda w: w[1] == 1).union(per_round)

    out = flow.from_iterable([(n, n, 0) for n in range(2, 400)]).iterate(walk).collect()
    return flow, [out]


@pytest.mark.parametrize(("processes", "cores"), [(2, 1), (2, 2), (3, 1)])
@pytest.mark.parametrize("build", [word_count, windows_and_reduce, loop_with_rounds])
def test_a_cluster_gives_exactly_the_results_of_one_process(build, processes, cores):
    expected = run_alone(build)
    outcomes = outcomes_of(build, processes, cores)
    assert outcomes[0] == ("ok", expected)
    for i in range(1, processes):  # collect() gathers on process 0
        assert outcomes[i] == ("ok", [[] for _ in expected])


def many_results():
    flow = Dataflow("many")
    # ~3 MB of results from each process: more than a pipe's buffer between
    # a launcher and its relay, and more than one RESULTS chunk on the link
    out = flow.from_iterable(range(60_000)).map(lambda n: (n, "x" * 40)).collect()
    return flow, [out]


def test_large_results_cross_to_process_0():
    expected = run_alone(many_results)
    outcomes = outcomes_of(many_results, 2)
    assert outcomes[0] == ("ok", expected)


def _cpus():
    flow = Dataflow("cpus")
    # one record per kernel (2 kernels): each reports the CPUs it is pinned to
    out = flow.from_iterable(range(2)).map(lambda n: sorted(os.sched_getaffinity(0))).collect()
    return flow, [out]


def test_processes_on_one_host_pin_their_kernels_to_different_cpus():
    outcomes = outcomes_of(_cpus, 2)
    status, (pinned,) = outcomes[0]
    assert status == "ok" and len(pinned) == 2
    assert len(set(pinned)) == 2, pinned  # not both on the first CPU


def big_records():
    flow = Dataflow("big")
    # 9 MB and 5 MB records, larger than a ring and than a link's window:
    # they cross processes in pieces, each piece within the link's credit
    # (records 0 and 2 are read by kernel 0 on process 0; key 1 belongs to
    # kernel 1 on process 1, so the big ones cross)
    records = ["a" * 9_000_000, "-", "b" * 5_000_000, "--"]
    out = (flow.from_iterable(records, batch_size=1).key_by(lambda s: 1 if s[0] in "ab" else 0)
           .map(lambda kv: (kv[0], len(kv[1]), kv[1][:3])).collect())
    return flow, [out]


def test_records_larger_than_a_ring_cross_processes():
    expected = run_alone(big_records)
    outcomes = outcomes_of(big_records, 2)
    assert outcomes[0] == ("ok", expected)


def test_peers_may_start_in_reverse_order():
    """Process 2 first, then 1 once 2 listens (2 is retrying to dial 0 and
    1 by then), then 0 once 1 listens."""
    expected = run_alone(word_count)
    outcomes = Cluster(word_count, 3, start=False).outcomes_started_in((2, 1, 0))
    assert outcomes[0] == ("ok", expected)


def test_a_wrong_secret_fails_both_sides_with_authentication_failed():
    # (process 1 starts once process 0 listens, and process 0 waits 5 s for
    # it: both started at once with 1 s each, a loaded machine's process 0
    # did not listen within process 1's second, which said "could not reach
    # process 0 ... within 1 s". Process 1 ends at the refusal: its 30 s
    # cost nothing.)
    cluster = Cluster(word_count, 2, start=False, options_for=lambda i: {
        "secret": "the-wrong-one" if i == 1 else SECRET, "startup_timeout": 5.0 if i == 0 else 30.0})
    outcomes = cluster.outcomes_started_in((0, 1))
    assert outcomes[1][0] == "error" and "authentication failed" in outcomes[1][2]
    assert outcomes[0][0] == "error" and "authentication failed" in outcomes[0][2]
    assert "did not connect" in outcomes[0][2]
    for outcome in outcomes.values():
        assert "the-wrong-one" not in outcome[2] and SECRET not in outcome[2]


def test_nothing_runs_in_a_cluster_that_never_forms(tmp_path):
    """Kernels wait for the links: with a wrong secret no operator opens, so
    not even a file sink's directory appears (the failed relay must not
    release them either)."""

    def build():
        flow = Dataflow("files")
        flow.from_iterable(range(100)).key_by(lambda n: n % 7).count().to_files(tmp_path / "out")
        return flow, []

    outcomes = outcomes_of(build, 2, options_for=lambda i: {
        "secret": "the-wrong-one" if i == 1 else SECRET, "startup_timeout": 1.0})
    assert [outcome[0] for outcome in outcomes.values()] == ["error", "error"]
    assert not (tmp_path / "out").exists()


def test_processes_with_other_cores_are_refused_on_both_sides():
    context = multiprocessing.get_context("fork")
    peers = peers_for(free_ports(2))
    pipes, children = [], []
    for i, cores in ((0, 1), (1, 2)):
        receiver, sender = context.Pipe(duplex=False)
        child = context.Process(target=_member, args=(word_count, i, peers, cores,
                                                      {"secret": SECRET, "startup_timeout": 15.0}, sender))
        child.start()
        sender.close()
        pipes.append(receiver)
        children.append(child)
    try:
        for pipe in pipes:
            assert pipe.poll(PROMPTLY)
            status, kind, message = pipe.recv()
            assert (status, kind) == ("error", "LinkMismatch")
            assert "cores=" in message
    finally:
        for child in children:
            child.kill()
            child.join(10)


def test_a_process_with_a_state_dir_and_one_without_are_refused_on_both_sides(tmp_path):
    """Process 0 snapshots (a state_dir), process 1 does not: both used to
    wait for ever (process 0 for an epoch agreement process 1 never
    offers); each must end at once with LinkMismatch naming it."""
    state = {"state_dir": tmp_path / "state"}
    cluster = Cluster(word_count, 2, options_for=lambda i: state if i == 0 else {})
    try:
        outcomes = cluster.outcomes(timeout=PROMPTLY)
    finally:
        cluster.close()
    for i, (status, kind, message) in outcomes.items():
        assert (status, kind) == ("error", "LinkMismatch"), (i, outcomes[i])
        assert "snapshots=" in message and "state_dir" in message


def mark_started(directory) -> None:
    """A kernel's source began reading: every link of its process is up
    (kernels start only then). The test waits for these files."""
    if directory is not None:
        Path(directory, f"started-{os.getpid()}").touch()


def started(directory) -> int:
    return len(list(Path(directory).glob("started-*")))


# what slow_numbers() collects, by a plain loop
SLOW_NUMBERS_TOTALS = [sorted(repr((k, sum(n for n in range(40) if n % 3 == k))) for k in range(3))]


def slow_numbers(started_in=None, go=None, ends_at_go=False):
    """A source that runs for a few seconds (long enough to disturb it), or
    at full speed once the file `go` exists (the test is done disturbing it).
    With `ends_at_go`, it ends only once `go` exists, however long the test
    takes to disturb it."""

    async def numbers():
        mark_started(started_in)
        for i in range(40):
            yield i
            if go is None or not go.exists():
                await asyncio.sleep(0.05)
        while ends_at_go and not go.exists():
            await asyncio.sleep(0.05)

    flow = Dataflow("slow")
    totals = flow.from_async_iterable(numbers()).key_by(lambda n: n % 3).sum().collect()
    return flow, [totals]


def test_garbage_plain_http_and_strangers_on_the_port_change_nothing(tmp_path):
    go = tmp_path / "go"
    # (the run ends only once the test is done: on a loaded machine its ~2 s
    # were over before the strangers came, and they found the port closed)
    cluster = Cluster(functools.partial(slow_numbers, tmp_path, go, ends_at_go=True), 2, logs=tmp_path)
    try:
        port = cluster.ports[0]
        wait_until(lambda: started(tmp_path) == 2, what="the cluster to run")
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"\x00\xff garbage \r\n\r\n" * 10)
            assert closed_by_server(s, within=2.0).startswith(b"HTTP/1.0 400 Bad Request")
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert s.recv(100).startswith(b"HTTP/1.1 404")

        async def stranger(secret, process=1):
            from kernel.net._links import LinkError, dial

            try:
                link, session = await dial(f"http://127.0.0.1:{port}", secret, process, {0}, lambda *a: None,
                                           timeout=3)
            except LinkError as exc:
                return type(exc).__name__
            await link.close()
            await session.close()
            return "joined"

        assert asyncio.run(stranger("not-the-secret")) == "AuthenticationFailed"
        # the right secret, but no process of this cluster: refused too (a second process 1
        # ends the run, naming both: tests/kernel/test_session35_cluster_links_review.py)
        assert asyncio.run(stranger(SECRET, 5)) != "joined"
        go.touch()  # disturbed enough: the run may end
        outcomes = cluster.outcomes()
    finally:
        cluster.close()
    assert outcomes[0] == ("ok", SLOW_NUMBERS_TOTALS)
    assert outcomes[1] == ("ok", [[]])
    refusals = [line for line in cluster.log(0) if "refused" in line]
    assert refusals == [
        "WARNING kernel.links: refused a link from 127.0.0.1: malformed HTTP (BadHttpMethod)",
        "WARNING kernel.links: refused a link from 127.0.0.1: plain HTTP (GET /), not a link",
        "WARNING kernel.links: refused a link from 127.0.0.1: authentication failed with process 1 "
        "at 127.0.0.1: wrong or missing secret",
        "WARNING kernel.links: refused a link from 127.0.0.1: process 5 is not a peer of this process"], \
        refusals


def closed_by_server(s: socket.socket, within: float = 5.0) -> bytes:
    """What the server sent until it closed `s` (a reset counts as closed),
    which it must do within `within` seconds."""
    s.settimeout(within)
    chunks = []
    try:
        while chunk := s.recv(1 << 16):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    except TimeoutError:
        raise AssertionError(f"the server kept the connection open for {within:g} s") from None
    return b"".join(chunks)


# -- strangers before authentication ------------------------------------------------------------


def upgraded(port: int, deflate: bool = False) -> socket.socket:
    """A raw websocket connection to the link port that never authenticates
    (offering compression when `deflate`)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    key = base64.b64encode(os.urandom(16))
    s.sendall(b"GET /kernel-link HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
              b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key + b"\r\n"
              + (b"Sec-WebSocket-Extensions: permessage-deflate\r\n" if deflate else b"") + b"\r\n")
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += s.recv(4096)
    assert answer.startswith(b"HTTP/1.1 101"), answer
    return s


def frame_head(length: int, opcode: int, compressed: bool = False) -> bytes:
    """A client frame's head, masked with a zero key (the payload goes as is)."""
    first = 0x80 | (0x40 if compressed else 0) | opcode
    return struct.pack("!BBQ", first, 0x80 | 127, length) + b"\0\0\0\0"


def test_strangers_before_authentication_cost_the_relay_little_memory(tmp_path):
    """Issue 12: the link port applied its 16 MiB message limit and
    compression before the handshake, so strangers without the secret grew
    the relay by hundreds of MB. Here 16 strangers each send 15 KiB that
    deflate would unfold into 15 MiB, 6 start a 15 MiB frame and send 4 MiB
    of it, and 6 connect and never speak. The relay is refused, at the
    frame's head, everything but the silent ones, and its peak memory stays
    within a few MB; process 1 links while the silent ones are pending."""
    (tmp_path / "go").touch()  # nothing disturbs the run itself: no need for it to be slow
    cluster = Cluster(functools.partial(slow_numbers, go=tmp_path / "go"), 2, start=False)
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    unfolding = (packer.compress(b"a" * (15 << 20)) + packer.flush(zlib.Z_SYNC_FLUSH))[:-4]
    strangers, silent = [], []
    try:
        cluster.start_listening(0)
        port = cluster.ports[0]
        relay = listener_pid(port, cluster.pid(0))
        peak_before = memory_mb(relay, "VmHWM")
        silent = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(6)]
        for _ in range(6):
            s = upgraded(port)
            strangers.append(s)
            with contextlib.suppress(OSError):  # (refused at the head, it is reset while sending)
                s.sendall(frame_head(15 << 20, opcode=2) + b"p" * (4 << 20))
        for _ in range(16):
            s = upgraded(port, deflate=True)
            strangers.append(s)
            s.sendall(frame_head(len(unfolding), opcode=1, compressed=True) + unfolding)
        for s in strangers:
            closed_by_server(s, within=3.0)
        grown = memory_mb(relay, "VmHWM") - peak_before
        cluster.start(1)  # links while the silent strangers wait for their handshake
        outcomes = cluster.outcomes()
    finally:
        for s in strangers + silent:
            s.close()
        cluster.close()
    # Measured: under 1 MB; with the limit and compression of a data frame
    # before authentication, hundreds of MB
    print(f"the relay's peak memory grew by {grown:.1f} MB")
    assert grown < 10, f"the relay's peak memory grew by {grown:.0f} MB"
    assert outcomes[0] == ("ok", SLOW_NUMBERS_TOTALS)


def _endless(started_in=None):
    async def forever():
        mark_started(started_in)
        i = 0
        while True:
            yield i
            i += 1
            await asyncio.sleep(0.01)

    flow = Dataflow("endless")
    flow.from_async_iterable(forever()).key_by(lambda n: n % 5).count().collect()
    return flow, []


def test_a_killed_peer_ends_the_others_promptly_naming_it(tmp_path):
    cluster = Cluster(functools.partial(_endless, tmp_path), 3)
    try:
        wait_until(lambda: started(tmp_path) == 3, what="the cluster to run")
        victim = dict(cluster.children)[1]
        os.kill(victim.pid, signal.SIGKILL)  # its kernels and relay die with it (PDEATHSIG)
        killed = time.monotonic()
        for i in (0, 2):
            pipe = dict(cluster.pipes)[i]
            assert pipe.poll(PROMPTLY), f"process {i} did not notice"
            status, kind, message = pipe.recv()
            # directly, or through the other survivor ("process 2 failed: lost process 1 ...")
            assert (status, kind) in {("error", "PeerLost"), ("error", "PeerFailed")}
            assert "lost process 1 (127.0.0.1:" in message
        assert time.monotonic() - killed < PROMPTLY
    finally:
        cluster.close()


def test_the_heartbeat_option_gives_up_a_silent_peer_after_two_of_its_periods(tmp_path):
    """`run(..., heartbeat=0.3)`: process 1 frozen (SIGSTOP: its sockets
    stay open and nothing answers, as behind a cut cable) is given up by
    process 0 after two silent periods of 0.3 s. With the default (2.5 s)
    that takes at least 5 s; the message names the heartbeat used."""
    cluster = Cluster(functools.partial(_endless, tmp_path), 2, options_for=lambda i: {"heartbeat": 0.3})
    frozen: list[int] = []
    try:
        wait_until(lambda: started(tmp_path) == 2, what="the cluster to run")
        frozen = descendants(cluster.pid(1))  # the process, its kernel and its relay
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        stopped = time.monotonic()
        pipe = dict(cluster.pipes)[0]
        assert pipe.poll(PROMPTLY), "process 0 did not notice"
        status, kind, message = pipe.recv()
        took = time.monotonic() - stopped
    finally:
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        cluster.close()
    assert (status, kind) == ("error", "PeerLost"), message
    assert message.startswith(f"lost process 1 (127.0.0.1:{cluster.ports[1]}): ")
    assert "did not answer for 0.6 s (peer dead or network cut)" in message
    assert took < 4, f"{took:.1f} s to give up a silent peer"


def test_the_runs_heartbeat_default_is_the_links():
    """A run's default heartbeat and the links' are read alike (KERNEL_HEARTBEAT
    where set when the run or link starts, `net._environment`, else 2.5): the
    two must agree."""
    from kernel.net._links import DEFAULT_HEARTBEAT as link_default

    from kernel.execution._plan import DEFAULT_HEARTBEAT as plan_default

    assert plan_default == link_default == 2.5
    assert inspect.signature(run).parameters["heartbeat"].default is None  # (read when the run starts)


def _failing():
    def check(n):
        if n == 3_333:
            raise ValueError("bad record")
        return n

    flow = Dataflow("failing")
    flow.from_iterable(range(10_000)).map(check).key_by(lambda n: n % 4).count().collect()
    return flow, []


def test_a_user_error_on_one_process_names_the_operator_there_and_the_peer_elsewhere():
    outcomes = outcomes_of(_failing, 2)
    # record 3,333 is read by kernel 3333 % 2 = 1, i.e. process 1
    status, kind, message = outcomes[1]
    assert (status, kind) == ("error", "KernelProcessError")
    assert message.startswith("kernel 1 failed: OperatorError")
    assert "check" in message and "ValueError: bad record" in message and "3333" in message
    # the peer reports process 1's own error, not just a lost link
    status, kind, message = outcomes[0]
    assert (status, kind) == ("error", "PeerFailed")
    assert "process 1 (127.0.0.1:" in message and "failed: kernel 1 failed: OperatorError" in message
    assert "bad record" in message


def test_a_peer_that_never_comes_is_a_clear_error():
    peers = peers_for(free_ports(2))
    flow, _ = word_count()
    started = time.monotonic()
    # (no peer at all: a short timeout races nothing, so it may be as short
    # as a test wants to wait out)
    unreachable = r"could not reach process 0 at http://127\.0\.0\.1:\d+ within 0\.3 s"
    with pytest.raises(Exception, match=unreachable):
        run(flow, process_id=1, peers=peers, secret=SECRET, startup_timeout=0.3)
    assert time.monotonic() - started < PROMPTLY
    flow, _ = word_count()
    with pytest.raises(Exception, match=r"process 1 \(127\.0\.0\.1:\d+\) did not connect within 0\.3 s"):
        run(flow, process_id=0, peers=peers, secret=SECRET, startup_timeout=0.3)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"process_id": 2, "peers": "127.0.0.1:7001,127.0.0.1:7002"}, "process_id must be an int from 0 to 1"),
    ({"process_id": 0, "peers": "127.0.0.1"}, "is not host:port"),
    ({"process_id": 0, "peers": "127.0.0.1:http"}, "has no port number"),
    ({"process_id": 0, "peers": "h:1,h:1"}, "listed twice"),
    ({"process_id": 0}, "process_id needs peers"),
    ({"process_id": 0, "peers": "127.0.0.1:7001", "tls": ("/no/cert", "/no/key")}, "TLS file not found"),
    ({"process_id": 0, "peers": "127.0.0.1:7001", "heartbeat": 0}, "heartbeat must be a positive number"),
    ({"heartbeat": -1.0}, r"heartbeat must be a positive number of seconds, got -1\.0"),
    ({"heartbeat": float("inf")}, "heartbeat must be a positive number"),
    ({"heartbeat": "2"}, "heartbeat must be a positive number"),
    ({"heartbeat": True}, "heartbeat must be a positive number"),
])
def test_bad_cluster_arguments_are_clear_errors(kwargs, message):
    flow, _ = word_count()
    with pytest.raises(ValueError, match=message):
        run(flow, secret=SECRET, **kwargs)


def test_a_missing_secret_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("KERNEL_SECRET", raising=False)
    flow, _ = word_count()
    with pytest.raises(ValueError, match="KERNEL_SECRET"):
        run(flow, process_id=0, peers="127.0.0.1:7001")


def test_the_secret_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("KERNEL_SECRET", SECRET)
    expected = run_alone(word_count)
    outcomes = outcomes_of(word_count, 2, options_for=lambda i: {"secret": None})
    assert outcomes[0] == ("ok", expected)


# -- TLS -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificates(tmp_path_factory) -> dict[str, str]:
    """A CA and a certificate it signs for 127.0.0.1 (openssl, as a user would)."""
    d = tmp_path_factory.mktemp("tls")
    make_ca(d)
    sign(d, "node", "127.0.0.1", "extendedKeyUsage=serverAuth,clientAuth\n")
    self_signed(d, "other", "127.0.0.1")
    return {name: str(d / name) for name in ("ca.pem", "node.pem", "node.key", "other.pem", "other.key")}


def test_tls_links_give_the_same_results(certificates):
    expected = run_alone(word_count)
    tls = (certificates["node.pem"], certificates["node.key"], certificates["ca.pem"])
    outcomes = outcomes_of(word_count, 2, options_for=lambda i: {"tls": tls})
    assert outcomes[0] == ("ok", expected)


def test_a_tls_cluster_that_finishes_says_nothing_about_its_links_closing(certificates, tmp_path):
    """Found by a system test: over TLS, process 1 may exit before its
    websocket close frame is out, and process 0 logged `link to process 1
    closed: code 1006` on every successful run. A peer that said goodbye
    (BYE, DONE) may end its connection any way: the run's stderr says nothing
    about links."""
    pipeline = tmp_path / "pipeline.py"
    pipeline.write_text("from kernel import Dataflow\nflow = Dataflow('tls')\n"
                        "flow.from_iterable(range(1000)).key_by(lambda n: n % 3).count().collect()\n")
    tls = ["--tls-cert", certificates["node.pem"], "--tls-key", certificates["node.key"],
           "--tls-ca", certificates["ca.pem"]]
    env = {**os.environ, "KERNEL_SECRET": SECRET}
    for _ in range(4):  # it showed in 2 runs of 3
        peers = peers_for(free_ports(2))
        codes, outs = run_cli_processes(
            [[str(pipeline), "--process-id", str(i), "--peers", peers, *tls] for i in (0, 1)], [env, env])
        assert codes == [0, 0], outs
        # (under load a stall warning may be there too: only the links' words matter)
        assert [line for _, err in outs for line in err.splitlines() if "link" in line] == [], outs


def test_tls_refuses_a_peer_whose_certificate_the_ca_did_not_sign(certificates):
    good = (certificates["node.pem"], certificates["node.key"], certificates["ca.pem"])
    stranger = (certificates["other.pem"], certificates["other.key"], certificates["ca.pem"])
    outcomes = outcomes_of(word_count, 2, options_for=lambda i: {"tls": stranger if i == 1 else good,
                                                            "startup_timeout": 1.0})
    assert outcomes[0][0] == "error" and "did not connect" in outcomes[0][2]
    assert outcomes[1][0] == "error" and "could not reach process 0" in outcomes[1][2]


def test_the_cli_runs_a_cluster(tmp_path):
    """`python -m kernel.run --process-id --peers --secret-file`, as a user would."""
    pipeline = tmp_path / "pipeline.py"
    pipeline.write_text(
        "from kernel import Dataflow\n"
        "flow = Dataflow('cli')\n"
        "(flow.from_iterable(range(1000)).key_by(lambda n: n % 3).sum()\n"
        "     .filter(lambda kv: kv[0] == 1).print())\n")
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    peers = peers_for(free_ports(2))
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    env.pop("KERNEL_SECRET", None)
    codes, outs = run_cli_processes(
        [[str(pipeline), "--cores", "2", "--process-id", str(i), "--peers", peers,
          "--secret-file", str(secret_file), "--startup-timeout", "15"] for i in (1, 0)],
        [env, env])
    assert codes == [0, 0], outs
    printed = "".join(out for out, _ in outs)
    assert printed.strip() == str((1, sum(n for n in range(1000) if n % 3 == 1)))
    # and without any secret: a usage error, before anything starts
    done = subprocess.run(
        [os.sys.executable, "-m", "kernel.run", str(pipeline), "--process-id", "0", "--peers", peers],
        capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 2 and "KERNEL_SECRET" in done.stderr
    done = subprocess.run(
        [os.sys.executable, "-m", "kernel.run", str(pipeline), "--process-id", "0", "--peers", peers,
         "--secret-file", str(secret_file), "--heartbeat", "0"],
        capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 2
    assert done.stderr == "error: heartbeat must be a positive number of seconds, got 0.0\n"


def test_a_set_is_dealt_out_alike_by_processes_whose_str_hashes_differ(tmp_path):
    """Each process of a cluster builds the flow itself and deals out its
    own copy of from_iterable's input by position; a set of str iterates in
    another order in each (their hash seeds differ): ~500 of these 2,000
    records went to no kernel and ~500 to two."""
    pipeline = tmp_path / "pipeline.py"
    pipeline.write_text("from kernel import Dataflow\nflow = Dataflow('sets')\n"
                        "flow.from_iterable({f'r{n}' for n in range(2000)}).print()\n")
    peers = peers_for(free_ports(2))
    envs = [{**os.environ, "KERNEL_SECRET": SECRET, "PYTHONHASHSEED": str(i + 1)} for i in (0, 1)]
    codes, outs = run_cli_processes(
        [[str(pipeline), "--process-id", str(i), "--peers", peers, "--startup-timeout", "15"]
         for i in (0, 1)], envs)
    assert codes == [0, 0], outs
    printed = Counter(line for out, _ in outs for line in out.splitlines())
    assert printed == Counter(f"r{n}" for n in range(2000))


def endless_pipeline(tmp_path: Path) -> Path:
    """A pipeline that never ends; each kernel process touches
    `started-PID` in `tmp_path` once it runs."""
    pipeline = tmp_path / "endless.py"
    pipeline.write_text(
        "import asyncio, os, pathlib\n"
        "from kernel import Dataflow\n"
        "async def forever():\n"
        f"    pathlib.Path({str(tmp_path)!r}, f'started-{{os.getpid()}}').touch()\n"
        "    while True:\n"
        "        yield 1\n"
        "        await asyncio.sleep(0.01)\n"
        "flow = Dataflow('endless')\n"
        "flow.from_async_iterable(forever).key_by(lambda n: n).count().collect()\n")
    return pipeline


def start_endless_cluster(tmp_path: Path) -> list[subprocess.Popen]:
    """Two `python -m kernel.run` processes of `endless_pipeline` linked on
    free ports, each in a session of its own (a terminal's Ctrl-C or a
    pod's SIGTERM reaches one alone); `kill_groups` ends what is left."""
    pipeline = endless_pipeline(tmp_path)
    peers = peers_for(free_ports(2))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "KERNEL_SECRET": SECRET}
    return [subprocess.Popen(
        [os.sys.executable, "-m", "kernel.run", str(pipeline), "--process-id", str(i), "--peers", peers],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
        for i in (0, 1)]


def kill_groups(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)


def test_ctrl_c_on_one_process_tells_the_others(tmp_path):
    procs = start_endless_cluster(tmp_path)
    try:
        wait_until(lambda: started(tmp_path) == 2, what="the cluster to run")
        assert all(p.poll() is None for p in procs)
        os.killpg(procs[1].pid, signal.SIGINT)  # a terminal's Ctrl-C, on process 1
        outs = [p.communicate(timeout=PROMPTLY) for p in procs]
    finally:
        kill_groups(procs)
    assert procs[1].returncode == 130 and outs[1][1].endswith("interrupted\n"), outs[1]
    assert procs[0].returncode == 1, outs[0]
    assert "error: process 1 (127.0.0.1:" in outs[0][1] and "failed: interrupted (Ctrl-C)" in outs[0][1]


def _async_member(build, index, peers, out) -> None:
    try:
        flow, handles = build()
        asyncio.run(run_async(flow, process_id=index, peers=peers, secret=SECRET, heartbeat=1.0))
        out.send(("ok", [sorted(map(repr, h.items)) for h in handles]))
    except BaseException as exc:
        out.send(("error", type(exc).__name__, str(exc)))


def test_run_async_joins_a_cluster_too():
    expected = run_alone(word_count)
    context = multiprocessing.get_context("fork")
    peers = peers_for(free_ports(2))
    pipes, children = [], []
    for i in (1, 0):
        receiver, sender = context.Pipe(duplex=False)
        child = context.Process(target=_async_member, args=(word_count, i, peers, sender))
        child.start()
        sender.close()
        pipes.append(receiver)
        children.append(child)
    try:
        assert pipes[1].poll(60)
        assert pipes[1].recv() == ("ok", expected)
        assert pipes[0].poll(60)
        assert pipes[0].recv()[0] == "ok"
    finally:
        for child in children:
            child.kill()
            child.join(10)


def test_counter_reference_is_sane():
    # the flows above compare with run(flow) on one process; this pins that
    # reference to a plain computation once
    flow, (counts, _) = word_count()
    run(flow)
    assert dict(counts.items) == Counter(w for line in LINES for w in line.split() if w != "odd")



# -- flow control across the link ---------------------------------------------------------

# Records the slow operator handled, from its own process (even numbers:
# kernel 0's share) and from across the link (odd: kernel 1's). Shared
# memory, inherited by the forked cluster processes and their kernels.
_HANDLED = mmap.mmap(-1, 16)
# ~1 KB records (a str each, so that msgpack carries all of it: pickle would
# write a shared object once a batch): a link window (4 MiB) is ~0.2 s of
# the slow operator's work, so a link that stops granting credit stalls
# within the interval measured
_PAD = "x" * 1000


def handled() -> tuple[int, int]:
    """(local, remote) records the slow operator has handled so far."""
    return struct.unpack_from("<QQ", _HANDLED)


def _flood():
    """Every kernel reads an endless source; every record goes to kernel 0
    (process 0), whose operator handles ~20,000 records/s: without flow
    control the senders would buffer tens of MB a second."""

    def slowly(pair):
        deadline = time.perf_counter() + 0.00005
        while time.perf_counter() < deadline:
            pass
        offset = 8 * (int(pair[1][:8]) % 2)
        struct.pack_into("<Q", _HANDLED, offset, struct.unpack_from("<Q", _HANDLED, offset)[0] + 1)
        return pair

    flow = Dataflow("flood")
    records = flow.from_iterable(ENDLESS).map(lambda n: f"{n:08d}{_PAD}")
    records.key_by(lambda r: 0).map(slowly).sink(lambda batch: None)
    return flow, []


class _Endless:
    """Re-iterable and endless: each kernel process walks its own copy."""

    def __iter__(self):
        n = 0
        while True:
            yield n
            n += 1


ENDLESS = _Endless()


def tree_memory_mb(pid: int) -> float:
    """Memory of `pid` and all its descendants, in MB: their proportional
    set sizes (the resident sizes counted the test process's own heap once
    per forked process, ~160 MB each late in a full run)."""
    total = 0.0
    for p in descendants(pid):
        with contextlib.suppress(OSError, AssertionError):
            total += proportional_mb(p)
    return total


def test_a_slow_consumer_bounds_the_senders_memory_across_the_link():
    """Memory stays flat while records keep flowing, from both processes:
    the interval measured is the one in which the slow operator handled
    another 20,000 records from across the link."""
    struct.pack_into("<QQ", _HANDLED, 0, 0, 0)
    # (what each forked tree shares of this process's heap counts in its
    # proportional size: a pytest worker late in a full run is 250 MB and more)
    inherited = memory_mb(os.getpid())
    cluster = Cluster(_flood, 2)
    try:
        # rings and link windows fill within the first second (the waits'
        # bounds are for a hang only: a loaded machine took over 20 s for
        # the second; a longer interval lets a leak grow more, not less)
        wait_until(lambda: min(handled()) >= 5_000, timeout=120, what="records from both processes")
        first = {i: tree_memory_mb(child.pid) for i, child in cluster.children}
        local, remote = handled()
        wait_until(lambda: handled()[1] >= remote + 20_000, timeout=120,
                   what="more records from across the link")
        later = {i: tree_memory_mb(child.pid) for i, child in cluster.children}
        assert handled()[0] > local, "records of process 0 stopped"
        assert all(child.is_alive() for _, child in cluster.children), "the run should still be going"
    finally:
        cluster.close()
    for i in first:
        # each process: a launcher, a kernel, a relay (~20 MB each of their
        # own, proportionally) plus at most its rings and link windows in
        # flight: ~60 MB measured. No growth at all; with Link.send's credit
        # check taken out, process 0's relay grew 8.5 MB/s (34 MB in these
        # four seconds)
        assert later[i] - first[i] < 15, (first, later)
        assert later[i] < 100 + inherited, (first, later, inherited)
