"""Clusters on loopback: two and three real processes (each with its kernel
processes and its link relay) linked by websockets give exactly the results
of one process; peers start in any order; a wrong secret, an incompatible
peer, a dead peer, a failing peer end the run with an error that names the
cause; strangers and garbage on the port change nothing."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import socket
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from _ports import free_ports
from _procs import run_cli_processes

from kernel import Dataflow, run, run_async
from operators import Tumbling

SECRET = "cluster-test-secret"
PROMPTLY = 20.0  # seconds: an upper bound, never a synchronisation

pytestmark = pytest.mark.usefixtures("no_leaks")


def peers_for(ports: list[int]) -> str:
    return ",".join(f"127.0.0.1:{port}" for port in ports)


def _member(build, index, peers, cores, options, out) -> None:
    """One process of the cluster (a forked child of the test)."""
    try:
        flow, handles = build()
        run(flow, cores=cores, process_id=index, peers=peers, **options)
        out.send(("ok", [sorted(map(repr, h.items)) if h.items else [] for h in handles]))
    except BaseException as exc:
        out.send(("error", type(exc).__name__, str(exc)))
    finally:
        out.close()


class Cluster:
    """N forked processes, each running `run(flow, process_id=i, peers=...)`."""

    def __init__(self, build, processes: int, cores: int = 1, *, delays=None, options_for=None) -> None:
        self.context = multiprocessing.get_context("fork")
        self.ports = free_ports(processes)
        self.peers = peers_for(self.ports)
        self.children, self.pipes = [], []
        order = range(processes) if delays is None else sorted(range(processes), key=lambda i: delays[i])
        for i in order:
            if delays is not None:
                time.sleep(delays[i] - (0 if i == order[0] else delays[order[order.index(i) - 1]]))
            options = {"secret": SECRET, "startup_timeout": 15.0}
            if options_for is not None:
                options.update(options_for(i))
            receiver, sender = self.context.Pipe(duplex=False)
            child = self.context.Process(target=_member, args=(build, i, self.peers, cores, options, sender))
            child.start()
            sender.close()
            self.children.append((i, child))
            self.pipes.append((i, receiver))

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


@pytest.mark.parametrize(("processes", "cores"), [(2, 1), (2, 2), (3, 1)])
@pytest.mark.parametrize("build", [word_count, windows_and_reduce])
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
    expected = run_alone(word_count)
    outcomes = outcomes_of(word_count, 3, delays={2: 0.0, 1: 0.7, 0: 1.4})
    assert outcomes[0] == ("ok", expected)


def test_a_wrong_secret_fails_both_sides_with_authentication_failed():
    outcomes = outcomes_of(word_count, 2, options_for=lambda i: {
        "secret": "the-wrong-one" if i == 1 else SECRET, "startup_timeout": 4.0})
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
        "secret": "the-wrong-one" if i == 1 else SECRET, "startup_timeout": 3.0})
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


def slow_numbers():
    """A source that runs for a few seconds (long enough to disturb it)."""

    async def numbers():
        for i in range(40):
            yield i
            await asyncio.sleep(0.05)

    flow = Dataflow("slow")
    totals = flow.from_async_iterable(numbers()).key_by(lambda n: n % 3).sum().collect()
    return flow, [totals]


def test_garbage_plain_http_and_strangers_on_the_port_change_nothing():
    expected = run_alone(slow_numbers)
    cluster = Cluster(slow_numbers, 2)
    try:
        port = cluster.ports[0]
        time.sleep(0.8)  # running by now (an upper bound is not needed: any moment will do)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"\x00\xff garbage \r\n\r\n" * 10)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert s.recv(100).startswith(b"HTTP/1.1 404")

        async def stranger(secret):
            from net._links import LinkError, dial

            try:
                link, session = await dial(f"http://127.0.0.1:{port}", secret, 1, {0}, lambda *a: None,
                                           timeout=3)
            except LinkError as exc:
                return type(exc).__name__
            await link.close()
            await session.close()
            return "joined"

        assert asyncio.run(stranger("not-the-secret")) == "AuthenticationFailed"
        # the right secret, but process 1 is already linked: refused too
        assert asyncio.run(stranger(SECRET)) != "joined"
        outcomes = cluster.outcomes()
    finally:
        cluster.close()
    assert outcomes[0] == ("ok", expected)
    assert outcomes[1] == ("ok", [[]])


def _endless():
    async def forever():
        i = 0
        while True:
            yield i
            i += 1
            await asyncio.sleep(0.01)

    flow = Dataflow("endless")
    flow.from_async_iterable(forever()).key_by(lambda n: n % 5).count().collect()
    return flow, []


def test_a_killed_peer_ends_the_others_promptly_naming_it():
    cluster = Cluster(_endless, 3)
    try:
        time.sleep(1.5)
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
    with pytest.raises(Exception, match=r"could not reach process 0 at http://127\.0\.0\.1:\d+ within 2 s"):
        run(flow, process_id=1, peers=peers, secret=SECRET, startup_timeout=2.0)
    assert time.monotonic() - started < PROMPTLY
    flow, _ = word_count()
    with pytest.raises(Exception, match=r"process 1 \(127\.0\.0\.1:\d+\) did not connect within 2 s"):
        run(flow, process_id=0, peers=peers, secret=SECRET, startup_timeout=2.0)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"process_id": 2, "peers": "127.0.0.1:7001,127.0.0.1:7002"}, "process_id must be an int from 0 to 1"),
    ({"process_id": 0, "peers": "127.0.0.1"}, "is not host:port"),
    ({"process_id": 0, "peers": "127.0.0.1:http"}, "has no port number"),
    ({"process_id": 0, "peers": "h:1,h:1"}, "listed twice"),
    ({"process_id": 0}, "process_id needs peers"),
    ({"process_id": 0, "peers": "127.0.0.1:7001", "state_dir": "x"}, "state_dir is not supported"),
    ({"process_id": 0, "peers": "127.0.0.1:7001", "tls": ("/no/cert", "/no/key")}, "TLS file not found"),
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

    def openssl(*args):
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
            "-keyout", "ca.key", "-out", "ca.pem")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
            "-keyout", "node.key", "-out", "node.csr")
    Path(d, "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n")
    openssl("x509", "-req", "-in", "node.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", "ext.cnf", "-out", "node.pem")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", "other.key", "-out", "other.pem")
    return {name: str(d / name) for name in ("ca.pem", "node.pem", "node.key", "other.pem", "other.key")}


def test_tls_links_give_the_same_results(certificates):
    expected = run_alone(word_count)
    tls = (certificates["node.pem"], certificates["node.key"], certificates["ca.pem"])
    outcomes = outcomes_of(word_count, 2, options_for=lambda i: {"tls": tls})
    assert outcomes[0] == ("ok", expected)


def test_tls_refuses_a_peer_whose_certificate_the_ca_did_not_sign(certificates):
    good = (certificates["node.pem"], certificates["node.key"], certificates["ca.pem"])
    stranger = (certificates["other.pem"], certificates["other.key"], certificates["ca.pem"])
    outcomes = outcomes_of(word_count, 2, options_for=lambda i: {"tls": stranger if i == 1 else good,
                                                            "startup_timeout": 4.0})
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


def test_ctrl_c_on_one_process_tells_the_others(tmp_path):
    pipeline = tmp_path / "endless.py"
    pipeline.write_text(
        "import asyncio\n"
        "from kernel import Dataflow\n"
        "async def forever():\n"
        "    while True:\n"
        "        yield 1\n"
        "        await asyncio.sleep(0.01)\n"
        "flow = Dataflow('endless')\n"
        "flow.from_async_iterable(forever).key_by(lambda n: n).count().collect()\n")
    peers = peers_for(free_ports(2))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "KERNEL_SECRET": SECRET}
    procs = [subprocess.Popen(
        [os.sys.executable, "-m", "kernel.run", str(pipeline), "--process-id", str(i), "--peers", peers],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
        for i in (0, 1)]
    try:
        time.sleep(2.5)  # linked and running (a bound, not a synchronisation: any moment will do)
        assert all(p.poll() is None for p in procs)
        os.killpg(procs[1].pid, signal.SIGINT)  # a terminal's Ctrl-C, on process 1
        outs = [p.communicate(timeout=PROMPTLY) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    assert procs[1].returncode == 130 and outs[1][1].endswith("interrupted\n"), outs[1]
    assert procs[0].returncode == 1, outs[0]
    assert "error: process 1 (127.0.0.1:" in outs[0][1] and "failed: interrupted (Ctrl-C)" in outs[0][1]


def _async_member(build, index, peers, out) -> None:
    try:
        flow, handles = build()
        asyncio.run(run_async(flow, process_id=index, peers=peers, secret=SECRET))
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


def _flood():
    """Every kernel reads an endless source; every record goes to kernel 0
    (process 0), whose operator handles ~20,000 records/s: without flow
    control the senders would buffer millions of records a second."""

    def slowly(pair):
        deadline = time.perf_counter() + 0.00005
        while time.perf_counter() < deadline:
            pass
        return pair

    flow = Dataflow("flood")
    flow.from_iterable(ENDLESS).key_by(lambda n: 0).map(slowly).sink(lambda batch: None)
    return flow, []


class _Endless:
    """Re-iterable and endless: each kernel process walks its own copy."""

    def __iter__(self):
        n = 0
        while True:
            yield n
            n += 1


ENDLESS = _Endless()


def tree_rss_mb(pid: int) -> float:
    """Resident memory of `pid` and all its descendants, in MB."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except OSError:
            continue
    return total / 1e6


def test_a_slow_consumer_bounds_the_senders_memory_across_the_link():
    cluster = Cluster(_flood, 2)
    try:
        time.sleep(3.0)  # rings and link windows fill within the first second
        first = {i: tree_rss_mb(child.pid) for i, child in cluster.children}
        time.sleep(4.0)
        later = {i: tree_rss_mb(child.pid) for i, child in cluster.children}
        assert all(child.is_alive() for _, child in cluster.children), "the run should still be going"
    finally:
        cluster.close()
    for i in first:
        # each process: a launcher, a kernel, a relay (~45 MB each) plus at
        # most its rings and link windows in flight. Measured: no growth at
        # all; with Link.send's credit check taken out, process 0's relay
        # grew 8.5 MB/s (34 MB in these four seconds)
        assert later[i] - first[i] < 15, (first, later)
        assert later[i] < 400, (first, later)
