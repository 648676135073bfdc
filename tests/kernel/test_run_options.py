"""Options of `run()`, `run_async()`, `Dataflow()` and `print()` that were
taken unchecked: each is refused before any kernel starts (nothing of the
flow is read), with an error naming the option and the value."""

from __future__ import annotations

import asyncio
import gc
import math
from decimal import Decimal
from fractions import Fraction

import pytest

from kernel import Dataflow, Kernel, VirtualClock, run, run_async
from kernel.execution._cluster import parse_peers


class Watched:
    """An iterable that says whether a kernel ever read it."""

    def __init__(self) -> None:
        self.read = False

    def __iter__(self):
        self.read = True
        return iter([1, 2, 3])


def flow_and_source() -> tuple[Dataflow, Watched, object]:
    flow = Dataflow()
    source = Watched()
    out = flow.from_iterable(source).collect()
    return flow, source, out


SECONDS = "startup_timeout must be a positive number of seconds, got {!r}"


@pytest.mark.parametrize("value", [math.nan, -1, 0, 0.0, math.inf, "30", True])
def test_startup_timeout_must_be_positive_seconds_without_peers_too(value):
    # refused with peers already, but ignored without them until the day peers were added
    flow, source, _ = flow_and_source()
    with pytest.raises(ValueError) as info:
        run(flow, startup_timeout=value)
    assert str(info.value) == SECONDS.format(value)
    assert not source.read


GC = ("gc_threshold_during_run must be None (leave the GC alone) or an int from 0 (no automatic "
      "collection) to 2147483647, got {!r}")


@pytest.mark.parametrize("value", [-5, -1, 1.5, "x", True, 2**31])
def test_gc_threshold_must_be_none_or_an_int_gc_takes(value):
    # -5 collected at every allocation; 1.5, "x" and 2**31 failed as gc.set_threshold's own error
    flow, source, _ = flow_and_source()
    before = gc.get_threshold()
    with pytest.raises(ValueError) as info:
        run(flow, gc_threshold_during_run=value)
    assert str(info.value) == GC.format(value)
    assert not source.read
    assert gc.get_threshold() == before


@pytest.mark.parametrize("value", [0, None, 2**31 - 1])
def test_gc_thresholds_gc_takes_are_accepted(value):
    flow, _, out = flow_and_source()
    run(flow, gc_threshold_during_run=value)
    assert out.items == [1, 2, 3]


class Whole:
    """An integer that is no int, as numpy.int64 is: gc.set_threshold takes it (by __index__)."""

    def __index__(self) -> int:
        return 12345


def test_a_gc_threshold_of_another_integer_type_is_taken():
    # refused by 0dc158f's check (isinstance int), where the run set it before
    flow = Dataflow()
    out = flow.from_iterable([1]).map(lambda _: gc.get_threshold()[0]).collect()
    run(flow, gc_threshold_during_run=Whole())
    assert out.items == [12345]


CORES = ("cores must be at most 100 (kernels in one process: each pair of them has a ring of shared "
         "memory), got {!r}; for more on one machine run a cluster of several processes on it "
         "(peers=, --peers)")


@pytest.mark.parametrize("cores", [101, 10**6])
def test_more_cores_than_a_process_can_ring_are_refused(cores):
    # a million cores ended as a bare MemoryError, mapping rings one by one
    flow, source, _ = flow_and_source()
    with pytest.raises(ValueError) as info:
        run(flow, cores=cores)
    assert str(info.value) == CORES.format(cores)
    assert not source.read


def test_the_most_cores_a_process_takes_pass_the_check_and_fit_a_clusters_gate():
    import select

    from kernel._facade import MAX_CORES, check_cores
    from kernel.execution._child import GATE_RECORD

    assert MAX_CORES == 100
    check_cores(MAX_CORES)  # (only the check: 100 kernel processes are not started here)
    # a cluster's relay writes every kernel's gate record in one write, atomic up to PIPE_BUF
    assert MAX_CORES * GATE_RECORD.size <= select.PIPE_BUF


class MonotonicOnly:
    def monotonic(self) -> float:
        return 0.0

    def __repr__(self) -> str:
        return "MonotonicOnly()"


CLOCK = ("clock must have monotonic(), now() and timer(loop, delay, fn) (kernel.Clock), "
         "got {}, which has no {}")
CLASS = "clock must be a clock object, got the class VirtualClock: pass an instance (VirtualClock())"


@pytest.mark.parametrize(("clock", "message"), [
    (5, CLOCK.format(5, "monotonic, now, timer")),
    ("system", CLOCK.format("'system'", "monotonic, now, timer")),
    (MonotonicOnly(), CLOCK.format("MonotonicOnly()", "now, timer")),
    (VirtualClock, CLASS),
])
def test_a_clock_of_another_kind_is_refused(clock, message):
    # clock=5 was an AttributeError in the kernel; the class VirtualClock a TypeError at its first reading
    flow, source, _ = flow_and_source()
    with pytest.raises(ValueError) as info:
        run(flow, clock=clock)
    assert str(info.value) == message
    with pytest.raises(ValueError) as info:
        asyncio.run(run_async(flow, clock=clock))
    assert str(info.value) == message
    with pytest.raises(ValueError) as info:
        Kernel(clock=clock)  # the low-level API
    assert str(info.value) == message
    assert not source.read


@pytest.mark.parametrize("name", [5, None, b"flow", ["flow"]])
def test_a_dataflow_name_must_be_a_str(name):
    with pytest.raises(TypeError) as info:
        Dataflow(name)
    assert str(info.value) == f"Dataflow(name) takes the flow's name, a str, got {name!r}"


@pytest.mark.parametrize("prefix", [5, None, b"> "])
def test_a_print_prefix_must_be_a_str(prefix):
    # print(5) wrote "51" for the record 1
    flow = Dataflow()
    stream = flow.from_iterable([1])
    with pytest.raises(TypeError) as info:
        stream.print(prefix)
    assert str(info.value) == f"print(prefix) takes a str, written before each record, got {prefix!r}"
    assert len(flow.graph.nodes) == 1  # no print step was added


LOOPBACK = "127.0.0.1:7001"
PEERS = "peers must be 'host:port,host:port...' or a list of 'host:port' (or (host, port)), got "


@pytest.mark.parametrize(("options", "message"), [
    ({"peers": 5}, PEERS + "5"),
    ({"peers": {LOOPBACK}}, PEERS + "{'127.0.0.1:7001'}"),  # (its order: its strs' hashes', a process's own)
    ({"peers": LOOPBACK, "tls": "cert.pem"},
     "tls must be the paths (cert, key) or (cert, key, ca), got 'cert.pem'"),
    ({"peers": LOOPBACK, "tls": (1, 2, 3)},
     "tls must be the paths (cert, key) or (cert, key, ca), got (1, 2, 3)"),
    ({"peers": LOOPBACK, "tls": ("c", "k", "ca", "x")},
     "tls must be the paths (cert, key) or (cert, key, ca), got ('c', 'k', 'ca', 'x')"),
    ({"peers": LOOPBACK, "secret": 5}, "secret must be a str or bytes, not int"),
])
def test_cluster_options_of_another_kind_are_refused(options, message):
    # peers=5: "'int' object is not iterable"; tls="x": an AttributeError; secret=5 was
    # bytes(5), five zero bytes, a secret anyone could guess, and the cluster ran on it
    flow, source, _ = flow_and_source()
    with pytest.raises(ValueError) as info:
        run(flow, process_id=0, **{"secret": "s3cret", **options}, startup_timeout=1)
    assert str(info.value) == message
    assert not source.read


@pytest.mark.parametrize("peers", [
    ["127.0.0.1:7001", "127.0.0.1:7002"],
    ("127.0.0.1:7001", ("127.0.0.1", 7002)),
    iter(["127.0.0.1:7001", "127.0.0.1:7002"]),
    (f"127.0.0.1:{port}" for port in (7001, 7002)),
])
def test_peers_in_any_ordered_iterable_are_taken(peers):
    # 1afd100 took any iterable (list(peers)); e613cb4's check refused all but a list or a tuple
    assert parse_peers(peers) == [("127.0.0.1", 7001), ("127.0.0.1", 7002)]



@pytest.mark.parametrize("seconds", [math.nan, math.inf])
def test_a_virtual_clock_advances_by_finite_seconds_only(seconds):
    clock = VirtualClock()
    with pytest.raises(ValueError) as info:
        clock.advance(seconds)
    assert str(info.value) == f"advance needs a finite number of seconds >= 0, got {seconds!r}"
    assert clock.monotonic() == 0.0  # (NaN made every later reading NaN)
    with pytest.raises(ValueError) as info:
        VirtualClock(start=seconds)
    assert str(info.value) == f"VirtualClock: start must be a finite number of seconds, got {seconds!r}"


class Seconds:
    """A number that is no int or float, as numpy.int64 is: float() takes it."""

    def __float__(self) -> float:
        return 2.5


@pytest.mark.parametrize("start", [Seconds(), Fraction(5, 2), Decimal("2.5")])
def test_a_virtual_clock_starts_at_any_number_float_takes(start):
    # 1afd100 took float(start); e613cb4's check refused all but an int or a float
    clock = VirtualClock(start=start, epoch=start)
    assert (clock.monotonic(), clock.now()) == (2.5, 5.0)


@pytest.mark.parametrize("start", ["1", b"1", True, None])
def test_a_virtual_clock_start_of_another_kind_is_refused(start):
    with pytest.raises(ValueError) as info:
        VirtualClock(start=start)
    assert str(info.value) == f"VirtualClock: start must be a finite number of seconds, got {start!r}"


@pytest.mark.parametrize(("options", "message"), [
    ({"peers": 0}, "Kernel: peers must be a positive int (how many kernels run the flow), got 0"),
    ({"peers": 2.0}, "Kernel: peers must be a positive int (how many kernels run the flow), got 2.0"),
    ({"index": -1}, "Kernel: index must be an int from 0 to 0 (peers=1), got -1"),
    ({"index": 3, "peers": 2}, "Kernel: index must be an int from 0 to 1 (peers=2), got 3"),
    ({"index": True, "peers": 2}, "Kernel: index must be an int from 0 to 1 (peers=2), got True"),
    ({"logger": "kernel"}, "Kernel: logger must be a logging.Logger or None, got 'kernel'"),
])
def test_the_low_level_kernel_refuses_a_place_or_logger_of_another_kind(options, message):
    # Kernel(index=3, peers=2) was taken, logger="kernel" failed at the first log line
    with pytest.raises(ValueError) as info:
        Kernel(**options)
    assert str(info.value) == message


def test_the_low_level_kernel_takes_a_logger_or_an_adapter():
    import logging

    assert Kernel(index=1, peers=2, logger=logging.getLogger("mine")).context.index == 1
    Kernel(logger=logging.LoggerAdapter(logging.getLogger("mine"), {}))


class Wrapped:
    """A logger that is no logging.Logger: it has what a LoggerAdapter calls."""

    def __init__(self) -> None:
        self.lines: list[tuple[int, str]] = []

    def isEnabledFor(self, level: int) -> bool:
        return True

    def log(self, level: int, msg: str, *args, **kwargs) -> None:
        self.lines.append((level, msg % args))


def test_the_low_level_kernel_takes_a_logger_of_another_class_that_logs():
    # refused by ee4374f's check (Logger or LoggerAdapter only), where 1afd100 logged to it
    import logging

    logger = Wrapped()
    Kernel(index=1, peers=2, logger=logger).context.logger.warning("slow %s", "step")
    assert logger.lines == [(logging.WARNING, "[kernel 1] slow step")]
