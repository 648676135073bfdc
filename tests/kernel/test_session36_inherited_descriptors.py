"""The application's pipe write ends and sockets that kernel processes (and a
cluster's link relay) inherit through `fork`, and let go of where the flow
does not reach them (kernel/execution/_inherited_descriptors.py).

A thread of the caller feeding a subprocess's standard input, with
`from_iterable(p.stdout)` on two kernels, hung for ever: kernel 0 held a
copy of `p.stdin`'s write end, so the subprocess never saw the end of its
input and kernel 0 waited for the end of its output. So did a socketpair
whose other end a thread of the caller wrote and closed, and a pipe written
by a thread of the caller in a cluster (its relay held the writer).

Each case runs in a Python process of its own, with a time limit: a run
that hangs fails its test rather than the suite."""

from __future__ import annotations

import os
import socket
from collections import Counter

import pytest
from _scripts import assert_said_exact, run_script
from hypothesis import given, settings
from hypothesis import strategies as st

LINES = 200_000  # ~1.3 MB: more than a pipe holds, so the writer is still writing as the kernels fork


FEEDS_A_SUBPROCESS = """
    import subprocess, threading
    from kernel import Dataflow, run

    N = {lines}
    child = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    go = threading.Event()

    def feed():
        go.wait()
        with child.stdin:
            for i in range(N):
                child.stdin.write(b"%d\\n" % i)

    feeder = threading.Thread(target=feed)
    feeder.start()
    flow = Dataflow("subprocess")
    out = flow.from_iterable(child.stdout).map(int).collect()
    go.set()
    run(flow, cores={cores})
    feeder.join()
    child.wait()
    print("exact" if sorted(out.items) == list(range(N)) else f"wrong: {{len(out.items)}} records")
"""


@pytest.mark.parametrize("cores", [2, 3])
def test_a_subprocess_a_thread_of_the_caller_feeds_ends_and_its_output_is_read_once(tmp_path, cores):
    """The kernels held copies of `child.stdin`: `cat` never saw the end of
    its input, and the run never ended."""
    assert_said_exact(run_script(tmp_path, FEEDS_A_SUBPROCESS.format(lines=LINES, cores=cores)))


READS_A_SOCKETPAIR = """
    import socket, threading
    from kernel import Dataflow, run

    N = {lines}
    ours, theirs = socket.socketpair()
    go = threading.Event()

    def feed():
        go.wait()
        with theirs:
            theirs.sendall(b"".join(b"%d\\n" % i for i in range(N)))

    feeder = threading.Thread(target=feed)
    feeder.start()
    flow = Dataflow("socketpair")
    out = flow.from_iterable(ours.makefile("rb")).map(int).collect()
    go.set()
    run(flow, cores={cores})
    feeder.join()
    print("exact" if sorted(out.items) == list(range(N)) else f"wrong: {{len(out.items)}} records")
"""


@pytest.mark.parametrize("cores", [2, 3])
def test_a_socket_whose_peer_a_thread_of_the_caller_closes_ends(tmp_path, cores):
    """`run` on the main thread: the kernels held copies of the caller's
    end, and kernel 0 never saw the end of the other."""
    assert_said_exact(run_script(tmp_path, READS_A_SOCKETPAIR.format(lines=LINES, cores=cores)))


READS_A_PIPE_IN_A_CLUSTER = """
    import os, threading
    from kernel import Dataflow, run

    N = {lines}
    read, write = os.pipe()
    go = threading.Event()

    def feed():
        go.wait()
        with os.fdopen(write, "wb") as out:
            for i in range(N):
                out.write(b"%d\\n" % i)

    feeder = threading.Thread(target=feed)
    feeder.start()
    flow = Dataflow("pipe")
    out = flow.from_iterable(os.fdopen(read, "rb")).map(int).collect()
    go.set()
    run(flow, cores=2, process_id=0, peers="127.0.0.1:{port}", secret="s" * 32)
    feeder.join()
    print("exact" if sorted(out.items) == list(range(N)) else f"wrong: {{len(out.items)}} records")
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_pipe_a_thread_of_the_caller_writes_ends_in_a_cluster_too(tmp_path):
    """The kernels let go of the writers of the pipe a source reads, but the
    cluster's relay, forked too, kept its copy: kernel 0 never saw the end."""
    assert_said_exact(run_script(tmp_path, READS_A_PIPE_IN_A_CLUSTER.format(lines=LINES,
                                                                             port=_free_port())))


WRITES_WHAT_ITS_STEPS_REACH = """
    import os, socket, subprocess, threading
    from kernel import Dataflow, run

    N = 2_000
    read, write = os.pipe()  # a number, in a closure
    child = subprocess.Popen(["sort", "-n"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    ours, theirs = socket.socketpair()
    received = []
    reader = threading.Thread(target=lambda: received.append(theirs.makefile("rb").read()))
    reader.start()

    def to_the_child(x):  # a helper the step's function names: its global `child`
        child.stdin.write(b"%d\\n" % x)
        child.stdin.flush()

    flow = Dataflow("writes")
    numbers = flow.from_iterable(range(N))
    numbers.sink(lambda x: os.write(write, b"%d\\n" % x))
    numbers.sink(lambda x: to_the_child(x))
    numbers.sink(lambda x: ours.sendall(b"%d\\n" % x))
    run(flow, cores={cores})
    os.close(write)
    child.stdin.close()
    ours.close()
    reader.join()
    expected = list(range(N))
    results = [sorted(map(int, os.fdopen(read, "rb").read().split())),
               list(map(int, child.stdout.read().split())),
               sorted(map(int, received[0].split()))]
    child.wait()
    print("exact" if all(r == expected for r in results) else f"wrong: {{[len(r) for r in results]}}")
"""


@pytest.mark.parametrize("cores", [2, 3])
def test_pipes_and_sockets_the_steps_write_to_are_kept(tmp_path, cores):
    """What the kernels let go of is only what the flow does not reach: a
    descriptor held as a number, a subprocess's input through a helper, a
    socket, each written by a step, still get every record."""
    assert_said_exact(run_script(tmp_path, WRITES_WHAT_ITS_STEPS_REACH.format(cores=cores)))


STOPS_READING_A_SUBPROCESS = """
    import os, subprocess, threading, time
    from kernel import Dataflow, run

    producer = subprocess.Popen(["seq", "1", "100000000"], stdout=subprocess.PIPE)
    read, write = os.pipe()
    go = threading.Event()

    def application():
        go.wait()
        me, deadline = os.getpid(), time.monotonic() + 20
        while len(open(f"/proc/{{me}}/task/{{me}}/children").read().split()) < 1 + {cores}:
            assert time.monotonic() < deadline, "the kernels never started"
            time.sleep(0.005)  # (a poll: the kernels are forked by now, holding what they inherit)
        producer.stdout.readline()
        producer.stdout.close()  # enough: seq is told so (SIGPIPE) and ends
        producer.wait()
        with os.fdopen(write, "wb") as out:
            out.write(b"1\\n2\\n3\\n")

    thread = threading.Thread(target=application)
    thread.start()
    flow = Dataflow("after")
    out = flow.from_iterable(os.fdopen(read, "rb")).map(int).collect()
    go.set()
    run(flow, cores={cores})
    thread.join()
    print("exact" if sorted(out.items) == [1, 2, 3] else f"wrong: {{out.items}}")
"""


@pytest.mark.parametrize("cores", [2, 3])
def test_a_subprocess_whose_output_the_caller_closed_ends_while_the_kernels_run(tmp_path, cores):
    """The kernels held copies of `producer.stdout`'s read end: `seq` never
    got SIGPIPE, blocked on a full pipe, and the caller's thread waiting for
    it (which the flow's source waited for) waited for ever."""
    assert_said_exact(run_script(tmp_path, STOPS_READING_A_SUBPROCESS.format(cores=cores)))


# -- files a step's function reads, opened before the run -------------------------------------------------

def test_a_file_a_step_reads_has_each_kernels_own_read_position(tmp_path):
    """`f.seek(0); f.read()` in a map over a file opened before the run: the
    kernels shared its read position, each moving it under the others (of
    20,000 reads of a 100,000-character file on two kernels, ~950 got
    another size)."""
    from kernel import Dataflow, run

    path = tmp_path / "table.txt"
    path.write_text("x" * 100_000)
    with open(path) as table:

        def size(_):
            table.seek(0)
            return len(table.read())

        for cores in (1, 2, 3):
            flow = Dataflow("sizes")
            out = flow.from_iterable(range(6_000)).map(size).collect()
            run(flow, cores=cores)
            assert out.items == [100_000] * 6_000, (cores, sorted(set(out.items)))
        assert table.tell() == 100_000  # (the caller's own, moved by the run on one kernel)


@settings(max_examples=6, deadline=None)
@given(table=st.dictionaries(st.text(max_size=5), st.integers(), min_size=1, max_size=40),
       cores=st.sampled_from([2, 3]), read_before=st.booleans())
def test_a_lookup_table_a_function_loads_on_first_call_is_whole_on_every_kernel(table, cores, read_before):
    """A function that loads a table from a file opened before the run on
    its first call: the first kernel to load it read it whole, and the
    others, at its end, found nothing (each looked up in an empty table).
    With `read_before`, the caller read its first line before the run: each
    kernel goes on from there, as one kernel does."""
    import json
    import tempfile

    from kernel import Dataflow, run

    keys = sorted(table) * 50
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "table.jsonl")
        with open(path, "w") as out:
            out.write("header\n" + "".join(json.dumps([k, v]) + "\n" for k, v in table.items()))
        with open(path) as lines:
            if read_before:
                lines.readline()
            loaded: dict = {}

            def look_up(key):
                if not loaded:
                    loaded.update(json.loads(line) for line in lines if line != "header\n")
                return loaded.get(key)

            flow = Dataflow("lookup")
            found = flow.from_iterable(keys).map(look_up).collect()
            run(flow, cores=cores)
    assert Counter(found.items) == Counter(table[k] for k in keys)


def test_an_operators_method_keeps_the_pipe_it_writes_to():
    """An `Operator` class given to `apply`, whose method writes to a pipe
    of its closure (or its module's globals): the walk does not look into
    a class, so the kernels let go of the pipe, and the step failed with a
    BrokenPipeError. The methods of the classes reached are walked too."""
    from kernel import Dataflow, Operator, run

    read, write = os.pipe()

    class Tell(Operator):
        def on_batch(self, port, batch):
            for x in batch:
                os.write(write, b"%d\n" % x)

    try:
        flow = Dataflow("tell")
        flow.from_iterable(range(500)).apply(Tell)
        run(flow, cores=2)
    finally:
        os.close(write)
    with os.fdopen(read, "rb") as told:
        assert sorted(map(int, told.read().split())) == list(range(500))


USES_A_MODULES_UDP_SOCKET = """
    import socket, sys, types
    from kernel import Dataflow, run

    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(10)
    # a metrics client of a module of the application's (statsd's: a UDP socket made at its start,
    # its errors dropped), which the step reaches only through the module: not looked into
    metrics = types.ModuleType("metrics")
    metrics.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    metrics.address = receiver.getsockname()
    sys.modules["metrics"] = metrics

    def counted(n):
        try:
            metrics.sock.sendto(b"%d" % n, metrics.address)
        except OSError:
            pass  # (as a statsd client does)
        return n

    flow = Dataflow("metrics")
    flow.from_iterable(range(200)).map(counted).collect()
    run(flow, cores=2)
    got = sorted(int(receiver.recv(64)) for _ in range(200))
    print("exact" if got == list(range(200)) else f"wrong: {len(got)}")
"""


def test_a_network_socket_a_step_reaches_only_through_a_module_still_sends(tmp_path):
    """A kernel lets go of pipes and socketpairs it does not reach, not of
    network sockets: a step may reach one where the walk does not look
    (a module's attribute), and a UDP client that drops its errors lost
    every record's send without a word (received nothing: recv timed out)."""
    assert_said_exact(run_script(tmp_path, USES_A_MODULES_UDP_SOCKET))
