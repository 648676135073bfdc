"""Two sources of one run over one live stream: through two file objects
of it (`sys.stdin` and `sys.stdin.buffer` or `open(0, closefd=False)`),
each reading ahead into buffers of its own, the stream's lines were torn
apart at the edges of their reads (19,891 and 18,566 of 20,000 came whole,
no error): refused now, naming both sources. Through two iterators of one
file object (`stream`, `map(str.upper, stream)`, `iter(stream.readline, "")`)
their reader threads iterated the file object at once, tearing lines too
(19,968 whole): they take turns now, and every line comes whole, once."""

from __future__ import annotations

import pytest
from _live_streams import piped, run_script_over_a_file

from kernel import Dataflow, run

LINES = 20_000


def _line(i: int) -> str:
    return f"line-{i:010d}-end\n"


def _write_lines(out) -> None:
    out.write("".join(map(_line, range(LINES))))


@pytest.mark.parametrize("other", ["buffer", "opened again"])
def test_two_file_objects_of_one_stream_in_one_run_are_refused_naming_both(other):
    with piped(lambda out: out.write("".join(map(_line, range(100))))) as stream:  # (within the pipe)
        second = stream.buffer if other == "buffer" else open(stream.fileno(), closefd=False)
        try:
            flow = Dataflow("two")
            first = flow.from_iterable(stream, name="as text")
            flow.from_iterable(second, name="again").union(first).collect()
            with pytest.raises(Exception, match=r"again \(step 1\): its input reads .*and as text \(step 0\) "
                                                r"of this run reads the same stream through another file "
                                                r"object of it.*tear lines"):
                run(flow)
        finally:
            if second is not stream.buffer:
                second.close()


def test_iterators_of_one_file_object_in_one_run_take_every_line_whole_once():
    with piped(_write_lines) as stream:
        flow = Dataflow("three")
        as_is = flow.from_iterable(stream, name="as is")
        upper = flow.from_iterable(map(str.upper, stream), name="upper").map(str.lower)
        by_line = flow.from_iterable(iter(stream.readline, ""), name="by line")
        out = as_is.union(upper, by_line).collect()
        run(flow)
    assert sorted(out.items) == [_line(i) for i in range(LINES)]


def test_the_standard_input_through_two_file_objects_on_two_kernels_is_refused(tmp_path):
    script = (
        "import sys\n"
        "from kernel import Dataflow, run\n"
        "flow = Dataflow('two')\n"
        "text = flow.from_iterable(sys.stdin, name='text')\n"
        "flow.from_iterable(open(0, closefd=False), name='again').union(text).collect()\n"
        "try:\n"
        "    run(flow, cores=2)\n"
        "except Exception as exc:\n"
        "    print(exc)\n"
    )
    done = run_script_over_a_file(tmp_path, script, "".join(map(_line, range(100))))
    assert "again (step 1): its input reads" in done.stdout
    assert "text (step 0) of this run reads the same stream through another file object" in done.stdout
