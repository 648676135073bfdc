"""Where streams end: collect, sink(fn), print."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernel import Collected, Dataflow, run

EXAMPLES = settings(max_examples=40, deadline=None)
# capsys is function-scoped; each example reads (and so clears) what it printed.
CAPTURED = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

records = st.lists(st.one_of(st.integers(), st.text(alphabet="ab, ()'", max_size=5)), max_size=50)
# Printable lines: no line breaks inside a record.
lines = st.lists(
    st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), max_size=10), max_size=40
)
batch_sizes = st.one_of(st.just(1), st.integers(1, 12), st.integers(60, 5000))


@EXAMPLES
@given(records, batch_sizes)
def test_collect_gathers_every_record_in_order(data, batch_size):
    flow = Dataflow()
    out = flow.from_iterable(data, batch_size=batch_size).collect()
    assert isinstance(out, Collected)
    assert out.items == []  # nothing before the run
    run(flow)
    assert out.items == data
    assert repr(out) == f"<Collected collect (step 1): {len(data)} items>"


@EXAMPLES
@given(records, batch_sizes)
def test_sink_calls_fn_once_per_record_in_order(data, batch_size):
    got = []
    flow = Dataflow()
    result = flow.from_iterable(data, batch_size=batch_size).sink(got.append)
    assert result is None
    run(flow)
    assert got == data


@CAPTURED
@given(records, batch_sizes)
def test_print_writes_one_line_per_record(capsys, data, batch_size):
    capsys.readouterr()
    flow = Dataflow()
    flow.from_iterable(data, batch_size=batch_size).print()
    run(flow)
    out = capsys.readouterr().out
    assert out == "".join(f"{x}\n" for x in data)


@CAPTURED
@given(lines, st.text(alphabet="> :", max_size=3), batch_sizes)
def test_print_prefixes_every_line(capsys, data, prefix, batch_size):
    capsys.readouterr()
    flow = Dataflow()
    flow.from_iterable(data, batch_size=batch_size).print(prefix)
    run(flow)
    out = capsys.readouterr().out
    if not data:
        assert out == ""
    else:
        assert out.endswith("\n")
        assert out[:-1].split("\n") == [prefix + line for line in data]


def test_print_uses_str_not_repr(capsys):
    flow = Dataflow()
    flow.from_iterable(["a b", ("t", 1), 2.5, None], batch_size=3).print("> ")
    run(flow)
    assert capsys.readouterr().out == "> a b\n> ('t', 1)\n> 2.5\n> None\n"


def test_print_of_an_empty_stream_prints_nothing(capsys):
    flow = Dataflow()
    flow.from_iterable([]).print("never ")
    run(flow)
    assert capsys.readouterr().out == ""


def test_sinks_and_collect_on_branches_of_one_stream(capsys):
    got = []
    flow = Dataflow()
    s = flow.from_iterable(range(6), batch_size=4).map(lambda x: x * x)
    s.sink(got.append)
    s.print("sq=")
    out = s.collect()
    run(flow)
    assert got == out.items == [0, 1, 4, 9, 16, 25]
    assert capsys.readouterr().out.splitlines() == [f"sq={x}" for x in got]


def test_a_finished_flow_is_freed_without_the_cyclic_collector():
    """No reference cycle between a flow and its collect() handles: results
    go as soon as the user drops them (found profiling the windowed sum)."""
    import gc
    import weakref

    from kernel import Dataflow, run

    flow = Dataflow()
    out = flow.from_iterable(range(10)).map(str).collect()
    run(flow)
    alive = weakref.ref(flow)
    gc.disable()
    try:
        del flow, out
        assert alive() is None
    finally:
        gc.enable()


@pytest.mark.parametrize("where", ["a file", "under a file"])
def test_to_files_refuses_a_file_where_its_directory_goes_when_the_step_is_added(tmp_path, where):
    """to_files(path of a regular file) was built, and the run failed at its
    start with "cannot make the directory ...: File exists" (or "Not a
    directory" under a file), which did not say that a file was in the way."""
    afile = tmp_path / "afile"
    afile.write_text("")
    directory = afile if where == "a file" else afile / "out"
    said = (f"to_files({directory}): {directory} is a file, not a directory" if where == "a file" else
            f"to_files({directory}): {afile} is a file, not a directory (to_files makes {directory} "
            "in it)")
    with pytest.raises(ValueError) as info:
        Dataflow().from_iterable([1]).to_files(directory)
    assert str(info.value) == said + "; give to_files a directory (it writes its part files into it)"
    assert afile.read_text() == ""


@pytest.mark.parametrize("where", ["a file", "under a file"])
def test_to_files_refuses_a_file_put_where_its_directory_goes_after_the_build_at_the_runs_start(
        tmp_path, where):
    """A file made between the build and the run: the same words, from the
    run's start (it said "cannot make the directory ...: File exists")."""
    from kernel import KernelError

    afile = tmp_path / "afile"
    directory = afile if where == "a file" else afile / "out"
    flow = Dataflow()
    flow.from_iterable([1]).to_files(directory)
    afile.write_text("")
    detail = (f"{directory} is a file, not a directory" if where == "a file" else
              f"{afile} is a file, not a directory (to_files makes {directory} in it)")
    with pytest.raises(KernelError) as info:
        run(flow)
    assert str(info.value) == (f"to_files({directory}) (step 1): {detail}; give to_files a directory (it "
                               "writes its part files into it)")
    assert afile.read_text() == ""


def test_to_files_into_a_directory_it_may_not_write_is_refused_at_the_runs_start(tmp_path):
    """A read-only directory failed the run at its first batch ("cannot
    write .../.part-k0-e00000001.jsonl: Permission denied"), its records
    already handled; now at the run's start, before any record moves."""
    import os
    import subprocess
    import sys

    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o555)
    script = tmp_path / "pipeline.py"
    script.write_text("import sys\nfrom kernel import Dataflow, run\nflow = Dataflow('f')\n"
                      "handled = flow.from_iterable([1, 2]).map(lambda r: print('handled', r) or r)\n"
                      "handled.to_files(sys.argv[1])\nrun(flow)\n")
    # a process of this root user without the capabilities that let it write any file
    plain = ["setpriv", "--inh-caps=-dac_override,-dac_read_search",
             "--bounding-set=-dac_override,-dac_read_search"] if os.geteuid() == 0 else []
    try:
        ran = subprocess.run([*plain, sys.executable, str(script), str(out)], capture_output=True, text=True,
                             timeout=60)
    finally:
        out.chmod(0o755)
    assert ran.returncode == 1 and ran.stdout == ""
    assert ran.stderr.splitlines()[-1] == (
        f"kernel.scheduling._errors.KernelError: to_files({out}) (step 2): the directory {out} is read-only "
        "(no permission to make files in it), so it cannot write its files there; give to_files a directory "
        "it may write"), ran.stderr
    assert list(out.iterdir()) == []


def test_to_files_refuses_what_is_not_a_path_when_the_step_is_added():
    # to_files(None) was accepted and the run failed opening the sink with os.fspath's bare
    # "expected str, bytes or os.PathLike object, not NoneType".
    with pytest.raises(TypeError, match=r"to_files needs a directory's path .* got None"):
        Dataflow().from_iterable([1]).to_files(None)  # type: ignore[arg-type]
