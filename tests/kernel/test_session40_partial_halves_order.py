"""What the steps emit in open() is held till every step is open, then
handed on downstream first (`Runtime._hold_during_open`), by the steps'
places in `Runtime.instances`. A combiner's partial half (a count's or
a window's, before the exchange, on more than one kernel) is appended after
the graph's steps, so its open output was handed on first, before the
steps downstream of it. The built-in partial halves emit nothing in open
and what one hands on crosses the exchange (the merge sees it in a later
activation), so no output showed it; a partial half that emits in open
shows it in the order the hand-ons are made (traced here, in each
kernel): now it goes in its topological place, just before the step it
feeds."""

from __future__ import annotations

from kernel import Dataflow, Operator, run
from kernel.dataflow._graph import Combiner
from kernel.runtime import _runtime


class _OpensWithOutput(Operator):
    """Emits `[(key, its name)]` in open."""

    label = ""

    def open(self, context):
        self.emit([("k", self.label)])

    def on_batch(self, port, batch):
        self.emit(batch)


class Partial(_OpensWithOutput):
    label = "partial"


class Merge(_OpensWithOutput):
    label = "merge"


class After(_OpensWithOutput):
    label = "after"


def _tracing_hand_ons(monkeypatch, trace) -> None:
    """Each kernel (forked: it inherits this) writes to `trace` which
    step's open output it hands on, as it hands it on."""
    held_helpers = _runtime._held_helpers

    def traced(runtime, helpers, place):
        emit, label = helpers["emit"], getattr(runtime.instances[place].op, "label", None)

        def traced_emit(batch):
            if label:
                with open(trace, "a") as out:
                    out.write(f"{runtime.kernel.context.index} {label}\n")
            emit(batch)

        return held_helpers(runtime, {**helpers, "emit": traced_emit}, place)

    monkeypatch.setattr(_runtime, "_held_helpers", traced)


def test_a_partial_halfs_open_output_is_handed_on_after_the_steps_downstream_of_it(tmp_path, monkeypatch):
    _tracing_hand_ons(monkeypatch, tmp_path / "trace")
    flow = Dataflow("open order")
    keyed = flow.from_iterable([], name="nothing").key_by(lambda x: "k")
    combined = keyed._keyed("combined", Merge, Combiner(Partial, Merge))
    out = combined.apply(After, name="after").collect()
    run(flow, cores=2)
    trace = (tmp_path / "trace").read_text().splitlines()
    for kernel in ("0", "1"):  # downstream first: the partial half is upstream of the merge
        handed_on = [line.split()[1] for line in trace if line.split()[0] == kernel]
        assert handed_on == ["after", "merge", "partial"], trace
    # what a user's steps see: each kernel's own open output, then the partials through the exchange
    assert sorted(out.items) == sorted([("k", "after")] * 2 + [("k", "merge")] * 2 + [("k", "partial")] * 2)
