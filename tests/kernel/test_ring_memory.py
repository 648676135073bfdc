"""Where a run's rings live: anonymous shared memory inherited by the forked
kernels, never /dev/shm. Named segments (unlinked at once) leaked a 4 MiB
file when a Ctrl-C came between a ring's creation and its unlink, and their
pages counted against /dev/shm's size: 64 MB in a Docker or Kubernetes
container by default, outgrown by the 20 rings of five kernels, where the
first kernel to write past it died of SIGBUS mid-run."""

from __future__ import annotations

import os
import signal
import sys

import pytest

from kernel import Dataflow, run
from net import SpscRing

pytestmark = pytest.mark.usefixtures("no_leaks")


def test_kernels_map_no_dev_shm_file(tmp_path):
    """Every kernel's mappings: none is a file of /dev/shm (the rings used
    to be `/dev/shm/kernel-<pid>-<token> (deleted)`, bounded by its size)."""
    flow = Dataflow("maps")

    def note_maps(record):
        path = tmp_path / f"maps-{os.getpid()}"
        if not path.exists():
            path.write_text(open("/proc/self/maps").read())

    numbers = flow.from_iterable(range(3000)).key_by(lambda n: n % 7)
    numbers.inspect(note_maps)
    counts = numbers.count().collect()
    run(flow, cores=3)
    expected = {k: sum(1 for n in range(3000) if n % 7 == k) for k in range(7)}
    assert sorted(counts.items) == sorted(expected.items())
    maps = sorted(tmp_path.glob("maps-*"))
    assert len(maps) == 3  # one per kernel process
    for path in maps:
        shm = [line for line in path.read_text().splitlines() if "/dev/shm/" in line]
        assert shm == [], f"{path.name}: a ring is a /dev/shm file:\n" + "\n".join(shm)


def test_an_inherited_ring_is_shared_with_a_forked_child():
    ring = SpscRing.create_inherited(1 << 12)
    try:
        assert ring.unlink() is False  # no name to remove
        pid = os.fork()
        if pid == 0:  # the child produces
            code = 0 if all(ring.push(b"%d" % i) for i in range(100)) else 1
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert [bytes(ring.pop()) for _ in range(100)] == [b"%d" % i for i in range(100)]
        assert ring.pop() is None
    finally:
        ring.close()


def test_ctrl_c_while_the_rings_are_made_leaves_nothing_in_dev_shm():
    """A real SIGINT, sent just as the fourth ring has been made (so it is
    raised before the launcher's next call runs): nothing of this process
    may be left in /dev/shm (the `no_leaks` fixture checks it)."""
    made = 0

    def interrupt_after_a_ring(frame, event, _arg):
        nonlocal made
        if event == "return" and frame.f_code.co_name.startswith("create") and (
            frame.f_globals.get("__name__", "").endswith("net.shm")
        ):
            made += 1
            if made == 4:
                os.kill(os.getpid(), signal.SIGINT)

    flow = Dataflow("interrupted")
    flow.from_iterable(range(10)).key_by(lambda n: n).count().collect()
    before = {n for n in os.listdir("/dev/shm") if f"-{os.getpid()}-" in n}
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            sys.setprofile(interrupt_after_a_ring)
            try:
                run(flow, cores=3)
            finally:
                sys.setprofile(None)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert made >= 4
    left = {n for n in os.listdir("/dev/shm") if f"-{os.getpid()}-" in n} - before
    assert left == set()
