"""Session 31's review of what kernel processes do with the files a
flow's steps write to (`kernel/execution/_written_files.py`): the walk
that finds them must stay cheap whatever a step holds, must find a file a
few hops away however much else the step holds beside it, and a file a
step opens itself in a kernel (a global set on first use) must get its
lines too."""

from __future__ import annotations

import collections
import gc
import sys
import time

import pytest

from kernel import Dataflow, run
from kernel.execution._written_files import written_by

pytestmark = pytest.mark.usefixtures("no_leaks")


def test_a_step_holding_a_huge_deque_is_walked_at_once_and_its_file_still_found(tmp_path):
    """`gc.get_referents` of a deque is every item: a step closing over a
    deque of 3,000,000 items took ~2 s to walk (in the launcher, then in
    each kernel), for no file. A container of more than a few items is
    not looked into, whatever its type."""
    window = collections.deque(range(3_000_000))
    with open(tmp_path / "out.txt", "w") as f:
        def keep(record, _window=window, _out=f):
            _out.write(f"{record}\n")

        # (this thread's CPU time, with no collection of the whole process in
        # it: on a loaded machine the wall clock read 1.32 s for a walk of
        # under a millisecond)
        gc.disable()
        try:
            started = time.thread_time()
            found = written_by([keep])
            took = time.thread_time() - started
        finally:
            gc.enable()
    assert found == [f]
    assert took < 0.5, f"the walk took {took:.2f} s of CPU time"


class _Context:
    """What a user hands a step: the output file, and a good deal more."""

    def __init__(self, out) -> None:
        self.out = out
        self.lookup = [[(i, str(i)) for i in range(60)] for _ in range(5)]


def test_a_file_next_to_a_big_structure_is_found_by_every_step_that_reaches_it(tmp_path):
    """The walk went depth-first, into the first thing it met: a context
    object holding the file and a few nested lists spent the 256 objects
    of a step's walk inside the lists, and the file, three hops from the
    function, was never reached (nor, by a second step sharing the
    context, which the first had marked seen). Breadth-first, what is
    near comes first."""
    with open(tmp_path / "out.txt", "w") as f:
        context = _Context(f)

        def first(record, _context=context):
            return record

        def second(record, _context=context):
            _context.out.write(f"{record}\n")

        assert written_by([second]) == [f]
        assert written_by([first, second]) == [f]


_LAZY_PATH = None
_LAZY_FILE = None


def _to_a_file_opened_on_first_use(record) -> None:
    global _LAZY_FILE
    if _LAZY_FILE is None:  # in a kernel: that kernel's own file, opened for appending
        _LAZY_FILE = open(_LAZY_PATH, "a")
    _LAZY_FILE.write(f"{record}\n")


def test_a_file_a_step_opens_on_first_use_gets_every_kernels_lines(tmp_path, monkeypatch):
    """A sink that opens its file on first use, into a global: each kernel
    opens its own (after the fork, so the walk at the start of its run saw
    None) and left by `os._exit` with its lines in the buffer: of 1,000,
    none reached the file. The files are looked for again as the run ends."""
    path = tmp_path / "out.txt"
    module = sys.modules[__name__]
    monkeypatch.setattr(module, "_LAZY_PATH", str(path))
    flow = Dataflow("opened on first use")
    flow.from_iterable(range(1000)).sink(_to_a_file_opened_on_first_use)
    run(flow, cores=2)
    assert module._LAZY_FILE is None  # (the caller's: only the kernels opened it)
    assert sorted(map(int, path.read_text().split())) == list(range(1000))
