"""Session 38: which records `to_files` writes so that `from_files(format=
"jsonl")` reads them back as they were, and what the others come back as.

The README said every record read back "as it was (tuples as lists)"; a
dict's keys are JSON text, so `{1: "a"}` came back `{"1": "a"}`. JSON's own
shapes round-trip; a tuple comes back a list and a dict's int, float, bool
or None key as its JSON text, as Python's `json` writes them (the README
says so now). Refusing such keys would cost a walk over every record
written."""

import pytest

from kernel import Dataflow, OperatorError, run


def _round_trip(records, directory):
    flow = Dataflow("write")
    flow.from_iterable(records).to_files(directory)
    run(flow)
    flow = Dataflow("read")
    back = flow.from_files(directory / "*.jsonl", format="jsonl").collect()
    run(flow)
    return back.items


def test_json_shapes_come_back_as_they_were(tmp_path):
    records = ["text", 7, 2.5, True, None, [1, "a", [None]], {"a": {"b": [1.5, False]}}]
    assert _round_trip(records, tmp_path / "out") == records


def test_tuples_and_dict_keys_come_back_as_json_has_them(tmp_path):
    records = [("a", (1, 2)), {1: "a", 2.5: "b", False: "c", None: "d"}, {"k": {10: [("x", 1)]}},
               {1: "a", "1": "b"}]
    assert _round_trip(records, tmp_path / "out") == [
        ["a", [1, 2]], {"1": "a", "2.5": "b", "false": "c", "null": "d"}, {"k": {"10": [["x", 1]]}},
        {"1": "b"}]  # (two keys with one text: the file holds both, a reader keeps the last)


def test_a_key_json_has_no_text_for_is_refused_naming_the_record(tmp_path):
    flow = Dataflow("tuple-key")
    flow.from_iterable([{(1, 2): "a"}]).to_files(tmp_path / "out")
    with pytest.raises(OperatorError, match=r"keys must be str(.|\n)*on record: \{\(1, 2\): 'a'\}"):
        run(flow)
