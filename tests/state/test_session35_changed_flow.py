"""A run of a changed flow on a state_dir is refused, as before, and told
which step differs (found by a review: "its steps differ from this one's"
named none, leaving a user to guess which edit of the pipeline did it)."""

from __future__ import annotations

import socket
import sqlite3

import pytest

from kernel import Dataflow, run
from state import StateError


def _mod3(x):
    return x % 3


def _flow(version: str, name: str = "changed"):
    flow = Dataflow(name)
    numbers = flow.from_iterable(range(100))
    if version == "count":
        numbers.key_by(_mod3).count().collect()
    elif version == "sum":
        numbers.key_by(_mod3).sum(name="total").collect()
    elif version == "filtered":
        numbers.filter(bool).key_by(_mod3).count().collect()
    elif version == "more":
        numbers.key_by(_mod3).count().collect()
        numbers.collect(name="everything")
    return flow


def _refusal(tmp_path, version: str, name: str = "changed") -> str:
    with pytest.raises(StateError) as info:
        run(_flow(version, name), state_dir=tmp_path / "state")
    return str(info.value)


def _said(tmp_path, detail: str) -> str:
    return (f"state_dir {str(tmp_path / 'state')!r} holds the state of another flow (its steps differ from "
            f"this one's{detail}); use a fresh state_dir for this flow")


@pytest.mark.parametrize("version, detail", [
    ("sum", ": its step 2 was 'count', and this flow's step 2 is 'total' (another kind of step, or other "
            "inputs)"),
    ("filtered", ": its step 1 was 'key_by(_mod3)', and this flow's step 1 is 'filter(bool)' (another kind "
                 "of step, or other inputs)"),
    ("more", ": this flow has 1 more step, step 4 'everything'"),
])
def test_a_changed_flow_is_told_which_step_differs(tmp_path, version, detail):
    run(_flow("count"), state_dir=tmp_path / "state")
    assert _refusal(tmp_path, version) == _said(tmp_path, detail)


def test_fewer_steps_and_another_name_are_said(tmp_path):
    run(_flow("more"), state_dir=tmp_path / "state")
    assert _refusal(tmp_path, "count") == _said(tmp_path, ": it has 1 more step, step 4 'everything'")
    assert _refusal(tmp_path, "more", name="renamed") == _said(
        tmp_path, ": it was written by the flow 'changed', and this one is 'renamed'")


def test_a_store_an_earlier_version_made_is_refused_as_before_then_says_the_step(tmp_path):
    """Its meta has no steps: the refusal names none; a run of its own flow
    adds them, and the next changed run is told."""
    run(_flow("count"), state_dir=tmp_path / "state")
    db = sqlite3.connect(tmp_path / "state" / "snapshots.sqlite")
    db.execute("DELETE FROM meta WHERE key = 'steps'")
    db.commit()
    db.close()
    assert _refusal(tmp_path, "sum") == _said(tmp_path, "")
    run(_flow("count"), state_dir=tmp_path / "state")  # (already ran to the end: publishes nothing)
    assert "its step 2 was 'count'" in _refusal(tmp_path, "sum")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_cluster_process_is_told_which_step_differs_too(tmp_path):
    """A cluster of one process on loopback: its store keeps the steps too."""
    def on_a_cluster(version):
        run(_flow(version), peers=[f"127.0.0.1:{_free_port()}"], process_id=0, state_dir=tmp_path / "state",
            secret="a-secret-for-this-test")

    on_a_cluster("count")
    with pytest.raises(StateError) as info:
        on_a_cluster("sum")
    assert str(info.value) == "process 0: " + _said(
        tmp_path, ": its step 2 was 'count', and this flow's step 2 is 'total' (another kind of step, or "
                  "other inputs)")
