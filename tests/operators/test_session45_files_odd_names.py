"""Files under odd names: a directory whose name holds glob's characters.

Found trying `from_files("exports [2026-12]/*.jsonl")` over a directory of
that name with its files in it: "from_files: no file matches 'exports
[2026-12]/*.jsonl'", and nothing said why (glob reads the brackets as a
set of characters). A file named so was already taken as meant
(`matching_files`); a directory is now named in the error, with how to
escape it."""

from __future__ import annotations

import glob
import json

import pytest

from kernel import Dataflow, run


@pytest.mark.parametrize("name", ["exports [2026-12]", "data[1]", "[x]y"])
def test_a_pattern_under_a_directory_named_with_glob_characters_says_why_nothing_matches(tmp_path, name):
    directory = tmp_path / name / "day 1"
    directory.mkdir(parents=True)
    (directory / "a.jsonl").write_text('{"n": 1}\n')
    pattern = f"{tmp_path / name}/day 1/*.jsonl"
    flow = Dataflow("odd names")
    with pytest.raises(FileNotFoundError) as caught:
        flow.from_files(pattern, format="jsonl")
    assert str(caught.value) == (
        f"from_files: no file matches {pattern!r} ({str(tmp_path / name)!r} is a directory, but glob reads "
        f"the [, ], * or ? in its name as a pattern: escape them, glob.escape({str(tmp_path / name)!r}) + "
        f"{'/day 1/*.jsonl'!r})")


def test_the_escaped_pattern_reads_every_line_once_into_an_odd_output_directory(tmp_path):
    """As the hint says, on two kernels, the output under a name with a
    space, a bracket and a non-ASCII letter: each record once."""
    inputs = tmp_path / "exports [2026-12]"
    inputs.mkdir()
    expected = []
    for f, name in enumerate(["ü 1.jsonl", "b [2].jsonl", "c d.jsonl"]):
        records = [{"file": f, "n": n, "text": "ä\u2028b"} for n in range(500)]
        (inputs / name).write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        expected += records
    out = tmp_path / "out [é] x"
    flow = Dataflow("odd names")
    flow.from_files(glob.escape(str(inputs)) + "/*.jsonl", format="jsonl").to_files(out)
    run(flow, cores=2, state_dir=tmp_path / "state ö", epoch_interval=0.01)
    got = [json.loads(line) for part in sorted(out.glob("part-*.jsonl"))
           for line in part.read_text(encoding="utf-8").split("\n") if line]
    key = lambda r: (r["file"], r["n"])  # noqa: E731
    assert sorted(got, key=key) == sorted(expected, key=key)
