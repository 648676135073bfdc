"""A cluster across real (namespaced) hosts: `python -m kernel.run ... --peers`.

Every "host" is a Linux network namespace with its own address on a bridge
(tests/kernel/_netns.py), so the processes of a cluster only reach each other
over TCP through veths, as on separate machines: a wrong address, a kernel
numbering that is per process instead of per cluster, or a link that does
not notice a pulled cable shows up here. Needs root (CI runs as root); the
tests skip only when namespaces cannot be created.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from _netns import NetnsUnavailable, Switch

REPO = Path(__file__).resolve().parents[2]
PORT = 7031
SECRET = "netns-test-secret"
RUN_TIMEOUT = 30.0  # seconds any one cluster process may run
HEARTBEAT = 0.5  # --heartbeat of the cut-cable tests: a cut is noticed in 1-1.5 s, not 5-7.5 s


# --- namespaces and processes --------------------------------------------------------------


def _switch(hosts: int) -> Switch:
    try:
        return Switch(hosts).open()
    except NetnsUnavailable as exc:
        pytest.skip(f"cannot create network namespaces: {exc}")


@pytest.fixture
def two_hosts():
    switch = _switch(2)
    try:
        yield switch
    finally:
        switch.close()


@pytest.fixture
def three_hosts():
    switch = _switch(3)
    try:
        yield switch
    finally:
        switch.close()


class Node:
    """One process of a cluster, run in its host's namespace; output in files."""

    def __init__(self, proc: subprocess.Popen, process_id: int, out: Path, err: Path) -> None:
        self.proc = proc
        self.process_id = process_id
        self.out_path = out
        self.err_path = err

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"process {self.process_id} still running after {timeout:.0f} s\n"
                f"stdout: {self.stdout[-2000:]}\nstderr: {self.stderr[-4000:]}"
            ) from None

    def kill(self) -> None:
        """SIGKILL its whole session: the launcher, and its kernels and relay
        even if the launcher is gone (a session's id is not reused while any
        process of it lives)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)

    @property
    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")


@pytest.fixture
def cluster(tmp_path):
    """`start(switch, pipeline, process_id, hosts=n, secret=..., extra=[...])`
    runs one process of an n-process cluster; teardown kills what is left."""
    nodes: list[Node] = []

    def start(switch: Switch, pipeline: Path, process_id: int, *, hosts: int,
              secret: str = SECRET, extra: tuple[str, ...] = ()) -> Node:
        peers = ",".join(f"{switch.addresses[i]}:{PORT}" for i in range(hosts))
        out = tmp_path / f"p{process_id}.out"
        err = tmp_path / f"p{process_id}.err"
        env = {**os.environ, "KERNEL_SECRET": secret, "PYTHONPATH": str(REPO)}
        env.pop("KERNEL_SECRET_FILE", None)
        with open(out, "wb") as stdout, open(err, "wb") as stderr:
            proc = subprocess.Popen(
                [*switch.exec_prefix(process_id), sys.executable, "-m", "kernel.run", str(pipeline),
                 "--cores", "2", "--process-id", str(process_id), "--peers", peers, *extra],
                cwd=REPO, env=env, stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: teardown kills it all
            )
        node = Node(proc, process_id, out, err)
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        node.kill()


def listening_on_its_host(pid: int, port: int) -> bool:
    """Something listens on TCP `port` in the network namespace of process
    `pid` (its /proc/PID/net tables are its namespace's)."""
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{table}") as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":  # LISTEN
                        return True
        except OSError:
            continue
    return False


def processes_running(marker: str) -> list[int]:
    """Pids of live processes whose command line contains `marker`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().decode(errors="replace")
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if marker in cmdline and state != "Z":
            found.append(int(entry))
    return found


def shm_segments_of(pids) -> set[str]:
    """/dev/shm names created by any of `pids` (rings are `prefix-<pid>-<token>`)."""
    tags = tuple(f"-{pid}-" for pid in pids)
    return {name for name in os.listdir("/dev/shm") if any(tag in name for tag in tags)}


# --- word count ----------------------------------------------------------------------------

WORDCOUNT = """\
from pathlib import Path

from kernel import Dataflow

HERE = Path(__file__).parent
WATCH = set((HERE / "watch.txt").read_text(encoding="utf-8").split())
lines = (HERE / "words.txt").read_text(encoding="utf-8").splitlines()

flow = Dataflow("wordcount")
counts = flow.from_iterable(lines, batch_size=256).flat_map(str.split).key_by(lambda w: w).count()
counts.to_files(HERE / "counts")
counts.filter(lambda kv: kv[0] in WATCH).print("watch ")
"""


def write_wordcount(directory: Path) -> tuple[Path, Counter, list[str]]:
    """The pipeline, its input (~150k words, ~4,000 distinct, some not ASCII)
    and the reference counts by a plain dict."""
    rng = random.Random(20240611)
    vocabulary = [f"w{n}" for n in range(3000)] + [f"café{n}" for n in range(500)] \
        + [f"日本{n}" for n in range(300)] + ["naïve", "x", "the"]
    cumulative = list(itertools.accumulate(1.0 / (rank + 1) for rank in range(len(vocabulary))))
    lines = [" ".join(rng.choices(vocabulary, cum_weights=cumulative, k=rng.randint(0, 12)))
             for _ in range(25_000)]
    reference: dict[str, int] = {}
    for line in lines:
        for word in line.split():
            reference[word] = reference.get(word, 0) + 1
    watch = ["the", "naïve", "w0", "w7", "café3", "日本0", "w2999"]
    watch = [w for w in watch if w in reference]
    (directory / "words.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (directory / "watch.txt").write_text(" ".join(watch), encoding="utf-8")
    pipeline = directory / "wordcount_pipeline.py"
    pipeline.write_text(WORDCOUNT)
    return pipeline, Counter(reference), watch


def read_counts(directory: Path, kernels: int) -> Counter:
    files = sorted(directory.iterdir())
    names = [f.name for f in files]
    assert all(re.fullmatch(r"part-k\d+-e\d+\.jsonl", n) for n in names), names
    # Kernels are numbered across the cluster: every one wrote its own file.
    assert {int(re.match(r"part-k(\d+)", n)[1]) for n in names} == set(range(kernels)), names
    counts: Counter = Counter()
    for f in files:
        for line in f.read_text(encoding="utf-8").splitlines():
            word, n = json.loads(line)
            assert word not in counts, f"{word!r} counted twice (once more in {f.name})"
            counts[word] = n
    return counts


def check_wordcount(nodes: list[Node], directory: Path, reference: Counter, watch: list[str]) -> None:
    for node in nodes:
        code = node.wait(RUN_TIMEOUT)
        assert code == 0, f"process {node.process_id} exited {code}:\n{node.stderr[-4000:]}"
        # (stall warnings may come on a busy machine; nothing else should)
        assert "error" not in node.stderr and "Traceback" not in node.stderr, node.stderr
    assert read_counts(directory / "counts", 2 * len(nodes)) == reference
    printed = [line for node in nodes for line in node.stdout.splitlines()]
    assert sorted(printed) == sorted(f"watch {(w, reference[w])}" for w in watch)


def test_wordcount_on_two_hosts_matches_a_dict(tmp_path, two_hosts, cluster):
    pipeline, reference, watch = write_wordcount(tmp_path)
    nodes = [cluster(two_hosts, pipeline, i, hosts=2) for i in range(2)]
    check_wordcount(nodes, tmp_path, reference, watch)


def test_wordcount_on_three_hosts_started_in_reverse(tmp_path, three_hosts, cluster):
    pipeline, reference, watch = write_wordcount(tmp_path)
    nodes = []
    for i in (2, 1, 0):  # the dialers come first and must wait for the others
        node = cluster(three_hosts, pipeline, i, hosts=3)
        nodes.append(node)
        deadline = time.monotonic() + 20
        while i and not listening_on_its_host(node.proc.pid, PORT):  # (it is up, dialling the others)
            assert node.proc.poll() is None, f"process {i} ended early:\n{node.stderr}"
            assert time.monotonic() < deadline, f"process {i} did not listen within 20 s"
            time.sleep(0.02)
    check_wordcount(sorted(nodes, key=lambda n: n.process_id), tmp_path, reference, watch)


# --- failures ------------------------------------------------------------------------------

ENDLESS = """\
import asyncio
import sys
from pathlib import Path

from kernel import Dataflow

HERE = Path(__file__).parent
PROCESS = int(sys.argv[sys.argv.index("--process-id") + 1])


async def ticks():
    for i in range(100_000):  # ~100 s: far longer than the test waits
        yield (PROCESS, i)
        await asyncio.sleep(0.001)


def mark(record):
    _key, (origin, _i) = record
    if origin != PROCESS:  # a record that crossed from the other host
        (HERE / f"crossed-{PROCESS}").touch()


flow = Dataflow("endless")
# Kernel k of the cluster reads the records i with i % 4 == k; keys by i // 4
# send most of them to a kernel on another host.
flow.from_async_iterable(ticks, batch_size=16).key_by(lambda r: r[1] // 4 % 64).sink(mark)
"""


SMALL = """\
from pathlib import Path

from kernel import Dataflow

flow = Dataflow("small")
flow.from_iterable(range(100)).key_by(lambda n: n % 7).count().to_files(Path(__file__).parent / "out")
"""


def test_a_cut_cable_ends_both_processes_naming_the_peer(tmp_path, two_hosts, cluster):
    pipeline = tmp_path / f"endless_{os.getpid()}_{time.monotonic_ns()}.py"
    pipeline.write_text(ENDLESS)
    shm_before = set(os.listdir("/dev/shm"))
    # links check every 0.5 s (--heartbeat), so the cut is noticed in 1-1.5 s
    nodes = [cluster(two_hosts, pipeline, i, hosts=2, extra=("--heartbeat", str(HEARTBEAT)))
             for i in range(2)]

    # Records flow both ways before the cut.
    deadline = time.monotonic() + 20
    crossed = [tmp_path / "crossed-0", tmp_path / "crossed-1"]
    pids: set[int] = set()
    while not all(c.exists() for c in crossed):
        pids.update(processes_running(str(pipeline)))
        for node in nodes:
            assert node.proc.poll() is None, f"process {node.process_id} ended early:\n{node.stderr}"
        assert time.monotonic() < deadline, "no records crossed between the hosts within 20 s"
        time.sleep(0.05)
    pids.update(processes_running(str(pipeline)))
    # the launcher, 2 kernels and a relay on each host
    assert len(pids) >= 8, f"expected 2 x (launcher + 2 kernels + relay), found {sorted(pids)}"
    assert all(node.proc.poll() is None for node in nodes)

    two_hosts.cut(1)
    cut_at = time.monotonic()
    for node in nodes:
        code = node.wait(max(0.1, cut_at + 20 - time.monotonic()))
        assert code == 1, f"process {node.process_id} exited {code}:\n{node.stderr[-4000:]}"
    took = time.monotonic() - cut_at
    # two to three heartbeats, and the time to stop (the default heartbeat could not be this quick)
    assert took < 5, f"the processes took {took:.1f} s to notice the cut"

    peers = [f"{two_hosts.addresses[i]}:{PORT}" for i in range(2)]
    for node, lost in ((nodes[0], 1), (nodes[1], 0)):
        assert f"error: lost process {lost} ({peers[lost]}): process {lost} did not answer for " \
               f"{2 * HEARTBEAT:g} s (peer dead or network cut)" in node.stderr, node.stderr
        assert "Traceback" not in node.stderr, node.stderr

    # Nothing is left behind: no kernel or relay process, no shared memory.
    deadline = time.monotonic() + 5
    while (left := processes_running(str(pipeline))) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert left == [], f"processes left behind: {left}"
    # Other tests may come and go in /dev/shm meanwhile: only names that carry
    # the pid of one of this cluster's processes count.
    new = shm_segments_of(pids) - shm_before
    assert new == set(), f"shared memory left in /dev/shm: {sorted(new)}"


def test_a_wrong_secret_fails_on_both_hosts(tmp_path, two_hosts, cluster):
    pipeline = tmp_path / "small_pipeline.py"
    pipeline.write_text(SMALL)
    started = time.monotonic()
    nodes = [
        cluster(two_hosts, pipeline, 0, hosts=2, extra=("--startup-timeout", "3")),
        cluster(two_hosts, pipeline, 1, hosts=2, secret="not-" + SECRET, extra=("--startup-timeout", "3")),
    ]
    for node, peer in ((nodes[0], 1), (nodes[1], 0)):
        code = node.wait(max(0.1, started + 20 - time.monotonic()))
        assert code == 1, f"process {node.process_id} exited {code}:\n{node.stderr[-4000:]}"
        assert "authentication failed" in node.stderr, node.stderr
        assert two_hosts.addresses[peer] in node.stderr, node.stderr  # names the other side
        assert "Traceback" not in node.stderr, node.stderr
        assert node.stdout == ""
    assert time.monotonic() - started < 15
    assert not (tmp_path / "out").exists(), "no record may flow between unauthenticated peers"


RECOVERABLE = """\
import os, time
from pathlib import Path

from kernel import Dataflow
from operators import Tumbling

OUT = Path(__file__).parent / "out"
GO = Path(__file__).parent / "go"  # created by the test once the cut run has ended


def slow(x):
    if x % 10 == 0 and not GO.exists():
        time.sleep(0.01)  # ~1 s a kernel: epochs complete, then the cable is cut
    return x


flow = Dataflow("recoverable")
numbers = flow.from_iterable(range(4000), batch_size=20, timestamp=lambda x: x / 100).map(slow)
numbers.key_by(lambda x: x % 7).count().to_files(OUT / "counts")
numbers.key_by(lambda x: x % 3).window(Tumbling(1.0)).sum().to_files(OUT / "sums")
"""


def test_a_cluster_cut_off_mid_run_resumes_once_plugged_back_exactly_once(tmp_path, two_hosts, cluster):
    """Issue 16: with a --state-dir (one directory both hosts share, each
    process its own file in it), a cable cut mid-run ends both processes;
    plugged back, the same commands resume from the epoch complete on both,
    and the files hold every count and windowed sum once."""
    import sqlite3

    pipeline = tmp_path / f"recoverable_{os.getpid()}_{time.monotonic_ns()}.py"
    pipeline.write_text(RECOVERABLE)
    extra = ("--state-dir", str(tmp_path / "state"), "--epoch-interval", "0.1", "--heartbeat", str(HEARTBEAT))
    nodes = [cluster(two_hosts, pipeline, i, hosts=2, extra=extra) for i in range(2)]
    store = tmp_path / "state" / "snapshots-process0.sqlite"

    def complete() -> int:
        try:
            db = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
            try:
                return max([e for (e,) in db.execute("SELECT epoch FROM complete")], default=0)
            finally:
                db.close()
        except sqlite3.Error:
            return 0

    deadline = time.monotonic() + 20
    while complete() < 3:
        assert all(node.proc.poll() is None for node in nodes), [node.stderr for node in nodes]
        assert time.monotonic() < deadline, "no complete epochs within 20 s"
        time.sleep(0.02)
    two_hosts.cut(1)
    for node in nodes:
        code = node.wait(20)
        assert code == 1, node.stderr
        assert "error: lost process" in node.stderr, node.stderr
    epoch = complete()
    two_hosts.plug(1)
    (tmp_path / "go").touch()  # the resumed run need not be slow: it goes at full speed

    nodes = [cluster(two_hosts, pipeline, i, hosts=2, extra=extra) for i in range(2)]
    for node in nodes:
        assert node.wait(RUN_TIMEOUT) == 0, node.stderr
        assert f"resuming from epoch {epoch}\n" in node.stderr, node.stderr

    def lines(name: str) -> list:
        return [json.loads(line) for path in sorted((tmp_path / "out" / name).glob("part-*.jsonl"))
                for line in path.read_text().splitlines()]

    assert sorted(map(tuple, lines("counts"))) == sorted(Counter(x % 7 for x in range(4000)).items())
    sums = Counter()
    for x in range(4000):
        sums[(x % 3, float(x // 100), float(x // 100 + 1))] += x
    assert sorted((k, s, e, t) for k, (s, e), t in lines("sums")) == sorted((*k, t) for k, t in sums.items())
    assert list((tmp_path / "out").rglob(".part-*")) == []
