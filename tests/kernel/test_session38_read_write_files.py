"""A regular file open for reading and writing, opened before the run and
reached by a step (kernel/execution/_inherited_descriptors.py): each
kernel reads it at its own position; what the kernels write to one whose
position was at its end goes whole to its end, the caller's position
following; one short of its end is written in place."""

from __future__ import annotations

import tempfile
from collections import Counter

import pytest

from kernel import Dataflow, run


@pytest.mark.parametrize("mode", ["w+", "w+b", "r+"])
def test_a_file_written_then_read_by_a_step_gives_each_kernel_every_byte(tmp_path, mode):
    """`TemporaryFile("w+")` written, `seek(0)`, then read whole by a step:
    the kernels shared its position (only files open for reading only got
    their own), and of 5,000 reads on two kernels ~30-400 got another size
    (0, 57,617, 112,501 characters for 100,000)."""
    if mode == "r+":
        (tmp_path / "table").write_text("")
        table = open(tmp_path / "table", mode)
    else:
        table = tempfile.TemporaryFile(mode)
    with table:
        table.write("x" * 100_000 if "b" not in mode else b"x" * 100_000)
        table.seek(0)

        def size(_):
            table.seek(0)
            return len(table.read())

        for cores in (1, 2, 3):
            flow = Dataflow("sizes")
            out = flow.from_iterable(range(3_000)).map(size).collect()
            run(flow, cores=cores)
            assert Counter(out.items) == {100_000: 3_000}, (cores, Counter(out.items).most_common(4))


@pytest.mark.parametrize("cores", [1, 2])
def test_lines_the_kernels_write_to_a_read_write_file_stay_whole_between_the_callers(cores):
    """A sink writing to a `TemporaryFile("w+")` the caller wrote a header
    to, and the caller's footer after the run: every line whole, once, the
    footer after them (the kernels append through their own descriptions,
    and the caller's position follows them to the end)."""
    with tempfile.TemporaryFile("w+") as out:
        out.write("header\n")
        flow = Dataflow("lines")
        flow.from_iterable(range(2_000)).sink(lambda i: out.write(f"line {i}\n"))
        run(flow, cores=cores)
        out.write("footer\n")
        out.seek(0)
        lines = out.read().splitlines()
    assert lines[0] == "header" and lines[-1] == "footer", (lines[:2], lines[-2:])
    assert sorted(lines[1:-1]) == sorted(f"line {i}" for i in range(2_000))


def test_a_read_write_file_a_step_writes_by_its_number_at_positions_stays_shared(tmp_path):
    """Reached as a number only (`os.pwrite(FD, ...)`; or an int of the
    step's, a count, equal to its number by chance), a file open for
    reading and writing is left as it was. (Opened again for appending, as
    a review found, each positional write went to its end instead: Linux's
    pwrite on O_APPEND.)"""
    import os

    path = tmp_path / "bytes"
    path.write_bytes(bytes(100))
    with open(path, "r+b", buffering=0) as target:
        FD = target.fileno()

        def put(i):
            os.pwrite(FD, b"\x01", i)

        for cores in (1, 2):
            flow = Dataflow("positions")
            flow.from_iterable(range(100)).sink(put)
            run(flow, cores=cores)
            assert path.read_bytes() == b"\x01" * 100, cores


def test_a_status_file_a_step_rewrites_in_place_stays_in_place(tmp_path):
    """A step keeping a small status file up to date (`seek(0)`, `write`)
    on two kernels: its size stays 10. Each kernel's own description opened
    for appending whatever its position (this session, before a review)
    wrote each update at the end: 10,010 bytes."""
    path = tmp_path / "status"
    path.write_text(f"{0:10d}")
    with open(path, "r+") as status:
        def note(i):
            status.seek(0)
            status.write(f"{i:10d}")
            status.flush()

        flow = Dataflow("status")
        flow.from_iterable(range(1_000)).sink(note)
        run(flow, cores=2)
    assert path.stat().st_size == 10
    assert int(path.read_text()) in range(1_000)
