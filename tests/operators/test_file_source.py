"""`from_files`: lines, JSON Lines and CSV shared among kernels by bytes,
exact against plain Python readers, resumed after a crash exactly once,
followed while they grow, with errors that name the file and the line."""

from __future__ import annotations

import asyncio
import csv
import importlib.util
import json
import os
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel import Dataflow, KernelError, KernelProcessError, Operator, OperatorError, run, run_async
from operators._file_source import plan_spans

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("_crash_runs", REPO / "tests" / "_crash_runs.py")
_crash_runs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_crash_runs)

# text without line breaks (a "\r" alone is kept inside a line, as by open())
LINE = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r"), max_size=12)


def write_files(folder: Path, files: list[list[str]], final_newline: bool = True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for number, lines in enumerate(files):
        text = "\n".join(lines) + ("\n" if lines and final_newline else "")
        (folder / f"f{number:02d}.txt").write_bytes(text.encode("utf-8"))


def reference_lines(folder: Path) -> list[str]:
    """The plain loop: every line of every file, in name order."""
    out = []
    for path in sorted(folder.glob("*.txt")):
        with open(path, encoding="utf-8", newline="\n") as f:
            out.extend(line.removesuffix("\n") for line in f)
    return out


def read_all(pattern, cores: int, **options) -> list:
    flow = Dataflow("files")
    out = flow.from_files(pattern, **options).collect()
    run(flow, cores=cores)
    return out.items


# -- exact, on 1, 2 and 3 kernels --------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(files=st.lists(st.lists(LINE, max_size=8), min_size=1, max_size=4),
       chunk_bytes=st.integers(1, 40), final_newline=st.booleans(), data=st.data())
def test_every_line_is_read_once_in_order_on_one_kernel(tmp_path_factory, files, chunk_bytes,
                                                        final_newline, data):
    folder = tmp_path_factory.mktemp("lines")
    write_files(folder, files, final_newline)
    batch_size = data.draw(st.integers(1, 5))
    got = read_all(folder / "*.txt", 1, chunk_bytes=chunk_bytes, batch_size=batch_size)
    assert got == reference_lines(folder)


@settings(max_examples=8, deadline=None)
@given(files=st.lists(st.lists(LINE, max_size=10), min_size=1, max_size=4),
       chunk_bytes=st.integers(1, 30), cores=st.sampled_from([2, 3]))
def test_every_line_is_read_once_in_order_on_several_kernels(tmp_path_factory, files, chunk_bytes, cores):
    # kernel k reads the k-th contiguous span and collect() puts kernel 0's
    # items first: the order is the files' own
    folder = tmp_path_factory.mktemp("lines")
    write_files(folder, files)
    assert read_all(folder / "*.txt", cores, chunk_bytes=chunk_bytes) == reference_lines(folder)


@settings(deadline=None)
@given(sizes=st.lists(st.integers(0, 50), min_size=1, max_size=6), peers=st.integers(1, 5))
def test_the_spans_cover_every_byte_once_and_evenly(sizes, peers):
    sized = [(f"f{i}", size) for i, size in enumerate(sizes)]
    covered = {name: [] for name, _ in sized}
    lengths = []
    for index in range(peers):
        spans = plan_spans(sized, index, peers)
        lengths.append(sum(end - start for _, start, end in spans))
        for name, start, end in spans:
            covered[name].extend(range(start, end))
    assert all(sorted(covered[name]) == list(range(size)) for name, size in sized)
    assert max(lengths) - min(lengths) <= 1


def test_a_large_file_is_cut_at_line_boundaries_between_kernels(tmp_path):
    lines = [f"line {n} " + "x" * (n % 17) for n in range(3000)]
    write_files(tmp_path, [lines])
    flow = Dataflow("split")
    stream = flow.from_files(tmp_path / "*.txt", chunk_bytes=512)
    by_kernel = stream.map(lambda line: line).collect()
    run(flow, cores=2)
    assert by_kernel.items == lines


@pytest.mark.parametrize("cores", [2, 3])
def test_a_span_starting_exactly_at_a_line_start_keeps_that_line(tmp_path, cores):
    # 6 lines of 5 bytes: the spans of 2 (or 3) kernels start at byte 15 (10, 20),
    # each the first byte of a line, which belongs to the span starting there
    lines = [f"ab{n:02d}" for n in range(6)]
    write_files(tmp_path, [lines])
    assert read_all(tmp_path / "*.txt", cores) == lines


def test_windows_line_endings_and_a_path_object(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"one\r\ntwo\r\n\r\nthree")
    assert read_all(tmp_path / "a.txt", 1) == ["one", "two", "", "three"]


class Sizes(Operator):
    """Notes every batch's length."""

    def __init__(self, sizes: list) -> None:
        self.sizes = sizes

    def on_batch(self, port, batch):
        self.sizes.append(len(batch))


def test_polls_read_what_the_kernel_wants_and_at_most_batch_size(tmp_path):
    write_files(tmp_path, [[f"l{n}" for n in range(300)]])
    sizes: list = []
    flow = Dataflow()
    flow.from_files(tmp_path / "*.txt", batch_size=100).apply(lambda: Sizes(sizes))
    run(flow)
    assert sum(sizes) == 300
    assert sizes[0] == 16  # the kernel's first poll asks for 16 records (README: the budget)
    assert max(sizes) <= 100


def test_undecodable_bytes_are_a_malformed_line_or_skipped(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"ok\n\xff\xfe\nfine\n")
    with pytest.raises(OperatorError, match=r"a\.txt, line 2: malformed lines line: UnicodeDecodeError"):
        read_all(tmp_path / "*.txt", 1)
    flow = Dataflow()
    stream = flow.from_files(tmp_path / "*.txt", on_error="skip")
    out = stream.collect()
    run(flow)
    assert out.items == ["ok", "fine"] and stream.skipped_count.value == 1


# -- JSON Lines and CSV -------------------------------------------------------------------


JSON_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=6)


@settings(max_examples=10, deadline=None)
@given(rows=st.lists(st.one_of(JSON_VALUE, st.just("<bad>"), st.just("<blank>")), max_size=25),
       cores=st.sampled_from([1, 2, 3]), chunk_bytes=st.integers(1, 64))
def test_jsonl_skips_and_counts_malformed_lines_exactly(tmp_path_factory, rows, cores, chunk_bytes):
    folder = tmp_path_factory.mktemp("jsonl")
    text = "".join("{oops\n" if r == "<bad>" else "  \n" if r == "<blank>" else json.dumps(r) + "\n"
                   for r in rows)
    (folder / "a.jsonl").write_text(text)
    flow = Dataflow("jsonl")
    stream = flow.from_files(folder / "*.jsonl", format="jsonl", on_error="skip", chunk_bytes=chunk_bytes)
    out = stream.collect()
    run(flow, cores=cores)
    assert out.items == [r for r in rows if r not in ("<bad>", "<blank>")]
    assert stream.skipped_count.value == rows.count("<bad>")


def test_a_malformed_jsonl_line_names_the_file_and_the_line_on_any_kernel(tmp_path):
    good = "".join(json.dumps({"n": n}) + "\n" for n in range(500))
    (tmp_path / "a.jsonl").write_text(good + '{"n": 500\n' + good)
    with pytest.raises(KernelProcessError) as caught:
        read_all(tmp_path / "*.jsonl", 2, format="jsonl", chunk_bytes=256)
    error = caught.value.__cause__
    assert isinstance(error, OperatorError)
    assert f"{tmp_path / 'a.jsonl'}, line 501: malformed jsonl line" in str(error)
    assert "from_files(jsonl)" in str(error)


# A line that is not one JSON value, after a blank line (or with a line of
# two values after it) that made msgspec's decode_lines count come out right
# when both were in one chunk: (text, its line, why, records and skipped
# lines with on_error="skip").
NOT_ONE_VALUE = [
    ('0\n\n1 2\n3\n', 3, "JSON is malformed: trailing characters (byte 3)", [0, 3], 1),
    ('{"a": 0}\n\n{"a": 1}{"a": 2}\n{"a": 3}\n', 3, "JSON is malformed: trailing characters (byte 9)",
     [{"a": 0}, {"a": 3}], 1),
    ('0\n\n1,2\n3\n', 3, "JSON is malformed: trailing characters (byte 2)", [0, 3], 1),
    ('0\n[1,\n2]\n3 4\n', 2, "Input data was truncated", [0], 3),  # a value across two lines
]


@pytest.mark.parametrize(("text", "line", "why", "kept", "skipped"), NOT_ONE_VALUE)
def test_a_jsonl_line_of_more_or_less_than_one_value_is_malformed_whatever_the_chunk_size(
        tmp_path, text, line, why, kept, skipped):
    """Read in one chunk (64 KiB, or any chunk past the blank line), such a
    file gave every value as a record; cut before it, the same line was
    malformed. Now it is malformed in every chunk size."""
    path = tmp_path / "a.jsonl"
    path.write_text(text)
    raw = text.split("\n")[line - 1].encode()
    expected = (f"operator 'from_files(jsonl) (step 0)': function 'jsonl decoding' raised FileError: "
                f"{path}, line {line}: malformed jsonl line: DecodeError: {why}\n"
                f"  on record: {raw!r}")
    for chunk_bytes in [*range(1, len(text) + 2), 1 << 16]:
        flow = Dataflow()
        flow.from_files(path, format="jsonl", chunk_bytes=chunk_bytes).collect()
        with pytest.raises(OperatorError) as info:
            run(flow)
        assert str(info.value) == expected, chunk_bytes
        flow = Dataflow()
        stream = flow.from_files(path, format="jsonl", on_error="skip", chunk_bytes=chunk_bytes)
        out = stream.collect()
        run(flow)
        assert (out.items, stream.skipped_count.value) == (kept, skipped), chunk_bytes


def test_skipped_lines_are_logged_once_per_file(tmp_path, caplog):
    (tmp_path / "a.jsonl").write_text("1\nbad\n2\nworse\n")
    (tmp_path / "b.jsonl").write_text("oops\n3\n")
    flow = Dataflow("skip")
    stream = flow.from_files(tmp_path / "*.jsonl", format="jsonl", on_error="skip")
    out = stream.collect()
    with caplog.at_level("WARNING", logger="kernel"):
        run(flow)
    assert out.items == [1, 2, 3] and stream.skipped_count.value == 3
    warnings = [r.getMessage() for r in caplog.records if "skipped malformed" in r.getMessage()]
    assert len(warnings) == 2
    assert "line 2 of " + str(tmp_path / "a.jsonl") in warnings[0]
    assert "line 1 of " + str(tmp_path / "b.jsonl") in warnings[1]


@settings(max_examples=8, deadline=None)
@given(rows=st.lists(st.lists(st.text(st.characters(blacklist_categories=("Cs",),
                                                    blacklist_characters="\n\r"), max_size=4),
                              min_size=3, max_size=3), max_size=12),
       cores=st.sampled_from([1, 2, 3]), header=st.booleans())
def test_csv_rows_match_the_csv_module(tmp_path_factory, rows, cores, header):
    folder = tmp_path_factory.mktemp("csv")
    rows = [r for r in rows if r != ["", "", ""]]  # csv writes an all-empty row as a line of commas
    with open(folder / "a.csv", "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        if header:
            writer.writerow(["a", "b", "c"])
        writer.writerows(rows)
    with open(folder / "a.csv", newline="") as f:
        expected = list(csv.DictReader(f)) if header else list(csv.reader(f))
    assert read_all(folder / "*.csv", cores, format="csv", header=header, chunk_bytes=16) == expected


def test_a_csv_row_with_the_wrong_field_count_or_an_open_quote_names_its_line(tmp_path):
    (tmp_path / "a.csv").write_text('k,v\nx,1\ny,2,3\n')
    with pytest.raises(OperatorError, match=r"a\.csv, line 3: malformed csv line: Error: 3 fields"):
        read_all(tmp_path / "a.csv", 1, format="csv", header=True)
    (tmp_path / "a.csv").write_text('x,1\n"y,2\n')
    with pytest.raises(OperatorError, match=r"a\.csv, line 2: malformed csv line"):
        read_all(tmp_path / "a.csv", 1, format="csv")


# -- clear errors ---------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-32", "no-such-codec"])
def test_an_encoding_the_files_cannot_be_cut_in_is_refused_when_the_flow_is_built(tmp_path, encoding):
    """Files are cut at the byte b"\\n": in UTF-16 that cut lands inside
    characters, and a followed or skipping read gave garbage records
    (20,000 UTF-16 lines came out as 10 records of CJK characters, with
    on_error="skip") or "malformed line 6" of a five-line file."""
    (tmp_path / "a.txt").write_bytes(b"one\ntwo\n")
    with pytest.raises(ValueError, match=f"from_files: .*encoding {encoding!r}"):
        Dataflow().from_files(tmp_path / "*.txt", encoding=encoding, on_error="skip")


@pytest.mark.parametrize("encoding", ["hex", "base64", "zlib", "rot13"])
def test_a_codec_that_is_no_text_encoding_is_refused_when_the_flow_is_built(tmp_path, encoding):
    """codecs.lookup knows "hex" (bytes to bytes, for codecs.decode), so
    from_files let it past the name check, and the newline check's
    decode raised a bare LookupError ("'hex' is not a text encoding; use
    codecs.decode() to handle arbitrary codecs") that named neither
    from_files nor its option."""
    (tmp_path / "a.txt").write_bytes(b"one\n")
    with pytest.raises(ValueError) as info:
        Dataflow().from_files(tmp_path / "*.txt", encoding=encoding)
    assert str(info.value) == (f"from_files: encoding {encoding!r} is no text encoding (a codec for "
                               "codecs.encode/decode); give the encoding of the files' text, such as "
                               "'utf-8' or 'latin-1'")


@pytest.mark.parametrize("encoding", ["punycode", "undefined"])
def test_a_text_encoding_that_cannot_decode_a_newline_is_refused_when_the_flow_is_built(tmp_path, encoding):
    """These raise a bare UnicodeError (not a UnicodeDecodeError) on
    b"a\\n": it came out of the flow's build as is."""
    (tmp_path / "a.txt").write_bytes(b"one\n")
    with pytest.raises(ValueError, match=rf"^from_files: encoding {encoding!r} does not write a newline as "):
        Dataflow().from_files(tmp_path / "*.txt", encoding=encoding)


@pytest.mark.parametrize("cores", [1, 2])
@pytest.mark.parametrize("format", ["jsonl", "lines", "csv"])
@pytest.mark.parametrize("encoding", ["latin-1", "cp1252", "utf-8-sig"])
def test_files_in_another_encoding_read_as_a_plain_reader_does(tmp_path, encoding, format, cores):
    """`encoding=` was ignored for JSON Lines (msgspec reads UTF-8): every
    latin-1 line was malformed, or all skipped without a record."""
    names = ["José", "Zoë", "Ærøskøbing", "plain", "Müller"] * 7
    if format == "jsonl":
        text = "".join(json.dumps({"n": n, "name": name}, ensure_ascii=False) + "\n"
                       for n, name in enumerate(names))
    elif format == "csv":
        text = "".join(f"{n},{name}\n" for n, name in enumerate(names))
    else:
        text = "".join(f"{n} {name}\n" for n, name in enumerate(names))
    (tmp_path / "a.txt").write_bytes(text.encode(encoding))
    with open(tmp_path / "a.txt", encoding=encoding, newline="") as f:  # the plain reader
        if format == "jsonl":
            expected = [json.loads(line) for line in f]
        elif format == "csv":
            expected = list(csv.reader(f))
        else:
            expected = [line.removesuffix("\n") for line in f]
    got = read_all(tmp_path / "*.txt", cores, format=format, encoding=encoding, chunk_bytes=16)
    assert got == expected


def test_bad_options_and_a_pattern_matching_nothing_fail_when_the_flow_is_built(tmp_path):
    flow = Dataflow()
    with pytest.raises(FileNotFoundError, match="from_files: no file matches"):
        flow.from_files(tmp_path / "*.log")
    (tmp_path / "a.log").write_text("x\n")
    with pytest.raises(ValueError, match="format must be one of"):
        flow.from_files(tmp_path / "*.log", format="parquet")
    with pytest.raises(ValueError, match="on_error must be"):
        flow.from_files(tmp_path / "*.log", on_error="ignore")
    with pytest.raises(ValueError, match="header=True is for format='csv'"):
        flow.from_files(tmp_path / "*.log", header=True)


@pytest.mark.parametrize(("options", "message"), [
    ({"follow": "no"}, "from_files: follow must be True or False, got 'no'"),
    ({"follow": 1}, "from_files: follow must be True or False, got 1"),
    ({"format": "csv", "header": "no"}, "from_files: header must be True or False, got 'no'"),
    ({"chunk_bytes": True}, "from_files: chunk_bytes must be an int >= 1, got True"),
    ({"poll_interval": True}, "from_files: poll_interval must be a number of seconds > 0, got True"),
    ({"idle_timeout": -1}, "idle_timeout must be a number of seconds > 0 or None, got -1"),
])
def test_flags_and_numbers_of_another_kind_are_refused_when_the_flow_is_built(tmp_path, options, message):
    """follow="no" followed and header="no" read a header (taken for their
    truth value); chunk_bytes=True read a byte at a time; idle_timeout=-1
    was taken unchecked by a bounded source."""
    (tmp_path / "a.log").write_text("x\n")
    flow = Dataflow()
    with pytest.raises(ValueError) as info:
        flow.from_files(tmp_path / "*.log", **options)
    assert str(info.value) == message
    assert not flow.graph.nodes


def test_an_unreadable_file_is_named(tmp_path):
    (tmp_path / "a.log").write_text("x\n")
    (tmp_path / "b.log").symlink_to(tmp_path / "gone")
    with pytest.raises(OperatorError, match=r"cannot read '.*b\.log'"):
        read_all(tmp_path / "*.log", 1)


def test_files_gone_by_the_time_the_run_starts_are_reported(tmp_path):
    (tmp_path / "a.log").write_text("x\n")
    flow = Dataflow()
    flow.from_files(tmp_path / "*.log").collect()
    (tmp_path / "a.log").unlink()
    with pytest.raises(OperatorError, match="no file matches"):
        run(flow)


# -- recovery -----------------------------------------------------------------------------


N_LINES = 3000
RECOVERY = textwrap.dedent(
    """
    import os, time
    from kernel import Dataflow

    def slow(line):
        time.sleep(0.0002)  # spread the run over many epochs
        return line

    flow = Dataflow("files")
    (flow.from_files(os.path.join(os.environ["IN"], "*.txt"), chunk_bytes=1000)
         .map(slow).to_files(os.path.join(os.environ["OUT"], "r")))
    """
)


@pytest.mark.parametrize("cores", [1, 2])
def test_a_crashed_run_resumes_at_each_position_and_writes_every_line_once(tmp_path, cores):
    lines = [f"{n:05d} " + "y" * (n % 23) for n in range(N_LINES)]
    write_files(tmp_path / "in", [lines[:1000], lines[1000:1300], lines[1300:]])
    (tmp_path / "pipeline.py").write_text(RECOVERY)

    def run_cli(crash):
        return _crash_runs.run_cli(tmp_path, cores, crash, IN=tmp_path / "in", OUT=tmp_path / "out")

    first = run_cli(f"batch:200@{cores - 1}")
    assert first.returncode != 0, "the crash point was never reached"
    published = list((tmp_path / "out" / "r").glob("part-*.jsonl"))
    assert published, "no epoch completed before the crash: nothing to resume from"
    second = run_cli(None)
    assert second.returncode == 0, second.stderr
    assert "resuming from epoch" in second.stderr
    records = [json.loads(line) for f in (tmp_path / "out" / "r").glob("part-*.jsonl")
               for line in f.read_text().splitlines()]
    assert sorted(records) == lines  # each line exactly once: resumed, not replayed


# -- following ---------------------------------------------------------------------------


async def wait_for(predicate, timeout=20.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.005)


def test_following_reads_appended_lines_and_new_files_until_cancelled(tmp_path):
    (tmp_path / "a.log").write_text("a1\na2\n")
    seen = []
    flow = Dataflow("tail")
    flow.from_files(tmp_path / "*.log", follow=True, poll_interval=0.01).sink(seen.append)

    async def main():
        task = asyncio.ensure_future(run_async(flow))
        await wait_for(lambda: seen == ["a1", "a2"])
        with open(tmp_path / "a.log", "a") as f:
            f.write("a3\na4-half")  # the half-written line waits for its newline
            f.flush()
            await wait_for(lambda: seen[-1:] == ["a3"])
            (tmp_path / "b.log").write_text("b1\n")
            await wait_for(lambda: seen[-1:] == ["b1"])
            f.write(" done\n")
        await wait_for(lambda: seen[-1:] == ["a4-half done"])
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert seen == ["a1", "a2", "a3", "b1", "a4-half done"]


def test_following_on_two_kernels_ships_every_line_once(tmp_path):
    # log shipping: files appear and grow while the run goes; the published
    # output (epochs, exactly once) holds every line once
    logs = tmp_path / "logs"
    logs.mkdir()
    flow = Dataflow("ship")
    flow.from_files(logs / "*.log", follow=True, poll_interval=0.01).to_files(tmp_path / "out")
    expected = []

    async def main():
        task = asyncio.ensure_future(run_async(flow, cores=2, state_dir=tmp_path / "state",
                                               epoch_interval=0.02))
        for round_ in range(3):
            for name in ("app", "db", "web", "cache"):
                lines = [f"{name}-{round_}-{n}" for n in range(50)]
                with open(logs / f"{name}.log", "a") as f:
                    f.write("".join(line + "\n" for line in lines))
                expected.extend(lines)
            await wait_for(lambda: published_records(tmp_path / "out") == sorted(expected))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert published_records(tmp_path / "out") == sorted(expected)


def test_to_files_after_a_followed_source_without_a_state_dir_is_refused(tmp_path):
    """Its files appear when the run ends, and a followed run ends only by
    being cancelled, which publishes nothing: every line was lost, silently
    (the hidden file, unflushed, held 0 of 100 lines)."""
    (tmp_path / "app.log").write_text("".join(f"line-{n}\n" for n in range(100)))
    flow = Dataflow("tail")
    flow.from_files(tmp_path / "*.log", follow=True, poll_interval=0.01).to_files(tmp_path / "out")
    with pytest.raises(KernelError, match=r"to_files\(.*without a state_dir .* never ends \(follow=True\)"):
        asyncio.run(asyncio.wait_for(run_async(flow), 5))


def test_a_file_truncated_while_followed_is_an_error(tmp_path):
    (tmp_path / "a.log").write_text("one\ntwo\n")
    seen = []
    flow = Dataflow("tail")
    flow.from_files(tmp_path / "*.log", follow=True, poll_interval=0.01).sink(seen.append)

    async def main():
        task = asyncio.ensure_future(run_async(flow))
        await wait_for(lambda: len(seen) == 2)
        with open(tmp_path / "a.log", "r+") as f:
            f.truncate(2)
        await asyncio.wait_for(task, 20)  # the run ends with the error

    with pytest.raises(OperatorError, match=r"a\.log' was truncated while following: it has 2 bytes, 8"):
        asyncio.run(main())


def test_a_file_truncated_and_written_past_its_offset_between_reads_is_an_error(tmp_path):
    """copytruncate with a busy writer (or a busy kernel): between two reads
    the file is truncated and grows past the offset again; its size no
    longer tells, and it was read on from the old offset (a torn line
    "w-line-006", six new lines lost)."""
    (tmp_path / "app.log").write_text("".join(f"old-{n:03d}\n" for n in range(10)))
    seen = []
    flow = Dataflow("tail")
    flow.from_files(tmp_path / "*.log", follow=True, poll_interval=0.01).sink(seen.append)

    async def main():
        task = asyncio.ensure_future(run_async(flow))
        await wait_for(lambda: len(seen) == 10)
        os.truncate(tmp_path / "app.log", 0)  # no await since: the source does not read meanwhile
        with open(tmp_path / "app.log", "a") as f:
            f.write("".join(f"new-line-{n:03d}\n" for n in range(10)))
        await asyncio.wait_for(task, 5)  # the run ends with the error

    with pytest.raises(OperatorError, match=r"app\.log' was truncated and written again while following"):
        asyncio.run(main())
    assert seen == [f"old-{n:03d}" for n in range(10)]


def published_records(out) -> list:
    """Every record `to_files` has published under `out`, sorted."""
    return sorted(json.loads(line) for f in out.glob("part-*.jsonl") for line in f.read_text().splitlines())


def ship_followed_logs(logs, tmp_path) -> asyncio.Task:
    """A log shipper's run: `logs/*.log` followed into `tmp_path/out`, with
    snapshots in `tmp_path/state`, as a task (cancel it to stop it)."""
    flow = Dataflow("ship")
    flow.from_files(logs / "*.log", follow=True, poll_interval=0.01).to_files(tmp_path / "out")
    return asyncio.ensure_future(run_async(flow, state_dir=tmp_path / "state", epoch_interval=0.02))


def test_a_followed_run_stopped_and_started_again_reads_on_from_its_positions(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    expected = []

    async def one_run(round_):
        task = ship_followed_logs(logs, tmp_path)
        for name in ("app", f"new{round_}"):
            lines = [f"{name}-{round_}-{n}" for n in range(40)]
            with open(logs / f"{name}.log", "a") as f:
                f.write("".join(line + "\n" for line in lines))
            expected.extend(lines)
        await wait_for(lambda: published_records(tmp_path / "out") == sorted(expected))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    for round_ in range(3):
        asyncio.run(one_run(round_))
    assert published_records(tmp_path / "out") == sorted(expected)


def open_paths() -> list[str]:
    """What this process's file descriptors point at (`... (deleted)`
    for a removed file)."""
    paths = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            paths.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass  # closed meanwhile (the listing's own descriptor)
    return paths


def test_a_followed_file_that_is_removed_is_closed_and_forgotten(tmp_path):
    """Old logs are deleted: a followed file that is removed is read to its
    end, then closed (its space freed) and left out of snapshots, so a
    resumed run does not fail on it and a new file of its name is read
    from its start."""
    logs = tmp_path / "logs"
    logs.mkdir()
    expected = []

    def append(name, lines):
        with open(logs / name, "a") as f:
            f.write("".join(line + "\n" for line in lines))
        expected.extend(lines)

    async def one_run(steps):
        task = ship_followed_logs(logs, tmp_path)
        try:
            for step in steps:
                await step()
                await wait_for(lambda: published_records(tmp_path / "out") == sorted(expected) or task.done())
                assert not task.done(), task.result()
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    async def remove_a():
        old = str(logs / "a.log")
        append("a.log", ["a-last"])
        os.unlink(logs / "a.log")
        append("b.log", ["b-1"])
        await wait_for(lambda: not any(p.startswith(old) for p in open_paths()), timeout=5)

    async def new_a():
        append("a.log", ["a-again"])  # a new file of the old name: read from its start

    async def first():
        append("a.log", [f"a-{n}" for n in range(30)])

    asyncio.run(one_run([first, remove_a, new_a]))
    os.unlink(logs / "a.log")  # removed while the run is stopped

    async def more_b():
        append("b.log", ["b-2"])

    asyncio.run(one_run([more_b]))
    assert published_records(tmp_path / "out") == sorted(expected)


def test_a_followed_csv_file_removed_and_made_again_is_read_with_its_own_header(tmp_path):
    (tmp_path / "a.csv").write_text("user,ms\nann,12\n")
    (tmp_path / "b.csv").write_text("k,v\n")
    seen = []
    flow = Dataflow("tail")
    flow.from_files(tmp_path / "*.csv", format="csv", header=True, follow=True,
                    poll_interval=0.01).sink(seen.append)

    def append(name, text):
        with open(tmp_path / name, "a") as f:
            f.write(text)

    async def main():
        task = asyncio.ensure_future(run_async(flow))
        await wait_for(lambda: len(seen) == 1)
        os.unlink(tmp_path / "a.csv")
        # two lines of b.csv read one after the other: the source has been round
        # its files (a.csv too) in between, and has seen that a.csv is gone
        append("b.csv", "x,1\n")
        await wait_for(lambda: len(seen) == 2)
        append("b.csv", "y,2\n")
        await wait_for(lambda: len(seen) == 3)
        (tmp_path / "a.csv").write_text("host,code\nweb,500\n")
        await wait_for(lambda: len(seen) >= 4 or task.done())
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())
    assert seen == [{"user": "ann", "ms": "12"}, {"k": "x", "v": "1"}, {"k": "y", "v": "2"},
                    {"host": "web", "code": "500"}]


def test_following_more_files_than_it_keeps_open_reads_them_all(tmp_path, monkeypatch):
    """Every followed file kept a descriptor for good: a log directory with
    more files than the process may open (daily logs with new names, as
    rotation should be) ended the run with EMFILE (at the 248th file of 400
    under a limit of 256). Past `max_open_followed`, a file read to its end
    is closed and opened again when it grows."""
    from operators._file_source import FileSource

    monkeypatch.setattr(FileSource, "max_open_followed", 4, raising=False)
    for n in range(20):
        (tmp_path / f"app-{n:02d}.log").write_text(f"day {n}\n")
    seen = []
    flow = Dataflow("tail")
    flow.from_files(tmp_path / "*.log", follow=True, poll_interval=0.01).sink(seen.append)

    def open_logs():
        return [p for p in open_paths() if p.startswith(str(tmp_path))]

    async def main():
        task = asyncio.ensure_future(run_async(flow))
        most = 0
        while len(seen) < 20:
            most = max(most, len(open_logs()))
            assert not task.done()
            await asyncio.sleep(0.002)
        for n in (0, 7, 19):  # closed ones are opened again as they grow
            with open(tmp_path / f"app-{n:02d}.log", "a") as f:
                f.write(f"more {n}\n")
        await wait_for(lambda: len(seen) == 23)
        most = max(most, len(open_logs()))
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return most

    most = asyncio.run(main())
    assert sorted(seen) == sorted([f"day {n}" for n in range(20)] + ["more 0", "more 7", "more 19"])
    assert most <= 5, most


def test_a_run_that_is_cancelled_or_fails_leaves_no_file_open(tmp_path):
    """A followed run stops by being cancelled, and a run can fail: on one
    kernel (the caller's process) the files it had open must not stay open
    in the host application, one descriptor per file and run."""
    import gc

    for name in ("a", "b"):
        (tmp_path / f"{name}.log").write_text("".join(f"{name}{n}\n" for n in range(3000)))

    def open_logs():
        gc.collect()  # the run's operators are garbage now
        return [p for p in open_paths() if p.startswith(str(tmp_path))]

    async def followed_and_cancelled():
        seen = []
        flow = Dataflow("tail")
        flow.from_files(tmp_path / "*.log", follow=True, poll_interval=0.01,
                        chunk_bytes=64).sink(seen.append)
        task = asyncio.ensure_future(run_async(flow))
        await wait_for(lambda: len(seen) >= 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    for _ in range(3):
        asyncio.run(followed_and_cancelled())
    assert open_logs() == []

    def fail(line):
        if line == "a10":
            raise ValueError("boom")
        return line

    for _ in range(3):
        flow = Dataflow("bounded")
        flow.from_files(tmp_path / "*.log", chunk_bytes=64).map(fail).collect()
        with pytest.raises(OperatorError, match="boom"):
            run(flow)
    assert open_logs() == []


def test_a_file_replaced_while_followed_is_an_error(tmp_path):
    (tmp_path / "a.log").write_text("one\n")
    seen = []
    flow = Dataflow("tail")
    flow.from_files(tmp_path / "*.log", follow=True, poll_interval=0.01).sink(seen.append)

    async def main():
        task = asyncio.ensure_future(run_async(flow))
        await wait_for(lambda: seen == ["one"])
        (tmp_path / "a.log").rename(tmp_path / "a.log.1")  # rotated by renaming
        (tmp_path / "a.log").write_text("two\n")
        await asyncio.wait_for(task, 20)

    with pytest.raises(OperatorError, match=r"a\.log' was replaced while following"):
        asyncio.run(main())


@pytest.mark.parametrize("rotation", ["rename", "copytruncate"])
def test_a_followed_file_replaced_while_the_run_was_stopped_is_an_error(tmp_path, rotation):
    """Rotation while a followed run with a state_dir is stopped, by
    renaming (another file, a new inode) or by logrotate's copytruncate
    (the same file, truncated and written again past the old offset): the
    new lines must not be read from the old file's offset (the first ones
    lost, a torn line "w-line-006" emitted), but refused, as while running."""
    logs = tmp_path / "logs"
    logs.mkdir()
    old = [f"old-{n:03d}" for n in range(10)]
    (logs / "app.log").write_text("".join(line + "\n" for line in old))

    async def one_run(wait):
        task = ship_followed_logs(logs, tmp_path)
        if not wait:
            await asyncio.wait_for(task, 5)  # ends with the error
        await wait_for(lambda: published_records(tmp_path / "out") == old)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(one_run(wait=True))
    if rotation == "rename":
        (logs / "app.log").rename(logs / "app.log.1")
    else:
        (logs / "app.log.1").write_bytes((logs / "app.log").read_bytes())
        os.truncate(logs / "app.log", 0)
    with open(logs / "app.log", "a") as f:
        f.write("".join(f"new-line-{n:03d}\n" for n in range(10)))
    says = "replaced" if rotation == "rename" else "truncated or rewritten"
    with pytest.raises(OperatorError, match=rf"was {says} while the run was stopped: '[^']*app\.log'"):
        asyncio.run(one_run(wait=False))
    assert published_records(tmp_path / "out") == old


def test_records_read_from_files_carry_event_time_into_windows(tmp_path):
    from operators import Tumbling

    events = [{"user": f"u{n % 3}", "t": n * 0.25} for n in range(40)]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events[:25]))
    (tmp_path / "b.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events[25:]))
    flow = Dataflow()
    stream = flow.from_files(tmp_path / "*.jsonl", format="jsonl", timestamp=lambda e: e["t"], chunk_bytes=64)
    counts = stream.key_by(lambda e: e["user"]).window(Tumbling(2.0)).count().collect()
    run(flow, cores=2)
    expected: dict = {}
    for e in events:
        key = (e["user"], int(e["t"] // 2.0) * 2.0)
        expected[key] = expected.get(key, 0) + 1
    got = sorted((k, w.start, n) for k, w, n in counts.items)
    assert got == sorted((k, s, n) for (k, s), n in expected.items())


def test_a_followed_csv_file_waits_for_its_header(tmp_path):
    (tmp_path / "a.csv").write_text("")
    seen = []
    flow = Dataflow("tail")
    flow.from_files(tmp_path / "*.csv", format="csv", header=True, follow=True,
                    poll_interval=0.01).sink(seen.append)

    async def main():
        task = asyncio.ensure_future(run_async(flow))
        with open(tmp_path / "a.csv", "a") as f:
            f.write("user,ms")  # the header, not yet complete
            f.flush()
            await asyncio.sleep(0.05)  # polls find no complete header line: nothing, and no error
            f.write("\nann,12\n")
        await wait_for(lambda: seen == [{"user": "ann", "ms": "12"}])
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())


def test_a_dangling_link_among_followed_files_is_told_once(tmp_path, caplog):
    """A link whose target is gone matches the pattern at every look for new
    files: dropped as 'gone' at its open, it was taken on again as new at
    the next look, and warned about again, every poll_interval for as long
    as the run went (one warning a look). Told once; followed once its
    target exists."""
    (tmp_path / "a.log").write_text("a1\n")
    (tmp_path / "b.log").symlink_to(tmp_path / "target")
    seen = []
    flow = Dataflow("tail")
    flow.from_files(tmp_path / "*.log", follow=True, poll_interval=0.01).sink(seen.append)

    async def main():
        task = asyncio.ensure_future(run_async(flow))
        await wait_for(lambda: seen == ["a1"])
        for n in range(5):  # each new file is seen at a look of its own: five looks at least
            (tmp_path / f"c{n}.log").write_text(f"c{n}\n")
            await wait_for(lambda n=n: seen[-1:] == [f"c{n}"])
        (tmp_path / "target").write_text("b1\n")  # the link leads to a file again: followed
        await wait_for(lambda: "b1" in seen)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with caplog.at_level("WARNING", logger="kernel"):
        asyncio.run(main())
    told = [r.getMessage() for r in caplog.records if "b.log" in r.getMessage()]
    assert len(told) == 1, told
    assert sorted(seen) == sorted(["a1", "b1"] + [f"c{n}" for n in range(5)])
