"""Snapshots written before `operators/windows/` was a package restore after
it, and what the window operators pickle keeps its module path: the blobs
below were made by the single-module `operators/_windows.py` (commit
cf63940). Sessions of aggregations without a merge keep their raw values in
`_Values` objects, and results carry `Window`s, which cross kernels by pickle
and may sit in a user's snapshotted state; both pickle by module path, so a
move would break old snapshots, and mixed-version clusters both ways."""

import base64
import math
import pickle

from kernel import TimedBatch
from operators import (
    CollectAggregation,
    FoldAggregation,
    Session,
    Tumbling,
    Window,
    WindowAggregate,
    WindowJoin,
)

SNAPSHOTS = base64.b64decode(
    "gAWVOgIAAAAAAAB9lCiMBGZvbGSUfZQojAZzdGF0ZXOUfZSMCHNlc3Npb25zlH2UKIwBYZRdlChdlChHAAAAAAAAAABHP/AA"
    "AAAAAACMGWtlcm5lbC5vcGVyYXRvcnMuX3dpbmRvd3OUjAdfVmFsdWVzlJOUKYGUTn2UjAZ2YWx1ZXOUXZRLAEsBSwCHlGFz"
    "hpRiZV2UKEc/8zMzMzMzM0dAAZmZmZmZmmgMKYGUTn2UaA9dlEsGSwRLAIeUYXOGlGJlXZQoR0AEAAAAAAAAR0AMAAAAAAAA"
    "aAwpgZROfZRoD12USwRLA0sAh5Rhc4aUYmVljAFilF2UXZQoRz/JmZmZmZmaRz/zMzMzMzMzaAwpgZROfZRoD12USwJLAksA"
    "h5Rhc4aUYmVhdXOMCGZyb250aWVylEc/4AAAAAAAAIwEbGF0ZZRLAIwIc2VxdWVuY2WUSwh1jAdjb2xsZWN0lH2UKGgDfZSM"
    "B3dpbmRvd3OUfZQoSwB9lChoB12URz/mZmZmZmZmSwGGlGFoH12URz/JmZmZmZmaSwKGlGF1SwJ9lGgHXZRHQAQAAAAAAABL"
    "A4aUYXN1c2gnRz/gAAAAAAAAaChLAGgpSwB1jARqb2lulH2UKGgDfZRoBX2UaAddlChdlChHP7mZmZmZmZpHP/mZmZmZmZpd"
    "lIwCbDGUYV2UjAJyMZRhhpRlXZQoR0AIAAAAAAAAR0AQAAAAAAAAXZRdlIwCcjKUYYaUZWVzc2gnRz/gAAAAAAAAaChLAGgp"
    "SwZ1dS4="
)
STATES = base64.b64decode(
    "gAWV0QEAAAAAAAB9lCiMBGZvbGSUfZSMCHNlc3Npb25zlH2UKIwBYZRdlChdlChHAAAAAAAAAABHP/AAAAAAAACMGWtlcm5l"
    "bC5vcGVyYXRvcnMuX3dpbmRvd3OUjAdfVmFsdWVzlJOUKYGUTn2UjAZ2YWx1ZXOUXZRLAEsBSwCHlGFzhpRiZV2UKEc/8zMz"
    "MzMzM0dAAZmZmZmZmmgKKYGUTn2UaA1dlEsGSwRLAIeUYXOGlGJlXZQoR0AEAAAAAAAAR0AMAAAAAAAAaAopgZROfZRoDV2U"
    "SwRLA0sAh5Rhc4aUYmVljAFilF2UXZQoRz/JmZmZmZmaRz/zMzMzMzMzaAopgZROfZRoDV2USwJLAksAh5Rhc4aUYmVhdXOM"
    "B2NvbGxlY3SUfZSMB3dpbmRvd3OUfZQoSwB9lChoBV2URz/mZmZmZmZmSwGGlGFoHV2URz/JmZmZmZmaSwKGlGF1SwJ9lGgF"
    "XZRHQAQAAAAAAABLA4aUYXN1c4wEam9pbpR9lGgDfZRoBV2UKF2UKEc/uZmZmZmZmkc/+ZmZmZmZml2UjAJsMZRhXZSMAnIx"
    "lGGGlGVdlChHQAgAAAAAAABHQBAAAAAAAABdlF2UjAJyMpRhhpRlZXNzdS4="
)
RECORDS = base64.b64decode(
    "gAWVSQAAAAAAAABdlIwBa5SMGWtlcm5lbC5vcGVyYXRvcnMuX3dpbmRvd3OUjAZXaW5kb3eUk5RHAAAAAAAAAABHP/AAAAAA"
    "AACGlIGUSwOHlGEu"
)


def operators():
    return {"fold": WindowAggregate(Session(1.0), FoldAggregation(list, lambda acc, v: [*acc, v])),
            "collect": WindowAggregate(Tumbling(1.0), CollectAggregation()),
            "join": WindowJoin(Session(1.0))}


def restored():
    """{name: (operator, emitted)}, each restored from the old snapshot."""
    snapshots = pickle.loads(SNAPSHOTS)
    ops = {}
    for name, op in operators().items():
        emitted = []
        op.open(None)
        op.emit = emitted.extend
        op.restore(snapshots[name])
        ops[name] = op, emitted
    return ops


def test_an_old_snapshot_restores_and_its_windows_grow_merge_and_close():
    """Before the snapshot: fold sessions a [0, 1): 1, a [1.2, 2.2): 4,
    a [2.5, 3.5): 3, b [0.2, 1.2): 2; collect windows [0, 1): a 1 (t=0.7),
    b 2, [2, 3): a 3; a join session a [0.1, 1.6) with l1 | r1 and one
    [3, 4) with r2 alone. After it, an event bridges the first two fold
    sessions (its values stay in arrival order: the sequence resumes after
    the snapshot's), one joins collect's window 0 with an earlier stamp, and
    one grows the join's session."""
    ops = restored()
    ops["fold"][0].on_batch(0, TimedBatch([("a", 5)], [0.9]))
    ops["collect"][0].on_batch(0, TimedBatch([("a", 0)], [0.1]))
    ops["join"][0].on_batch(1, TimedBatch([("a", "r3")], [1.0]))
    for op, _ in ops.values():
        op.on_watermark(math.inf)
    assert ops["fold"][1] == [("b", Window(0.2, 0.2 + 1.0), [2]), ("a", Window(0.0, 1.2 + 1.0), [1, 4, 5]),
                              ("a", Window(2.5, 3.5), [3])]
    assert ops["collect"][1] == [("a", Window(0.0, 1.0), [0, 1]), ("b", Window(0.0, 1.0), [2]),
                                 ("a", Window(2.0, 3.0), [3])]
    assert ops["join"][1] == [("a", Window(0.1, 2.0), ("l1", "r1")), ("a", Window(0.1, 2.0), ("l1", "r3"))]
    assert all(op.late == 0 for op, _ in ops.values())


def test_the_state_pickles_as_it_did():
    """Byte for byte: a process of the old version can read it."""
    ops = restored()
    states = {name: op.on_epoch(2)["states"] for name, (op, _) in ops.items()}
    assert pickle.dumps(states, protocol=5) == STATES


def test_window_results_pickle_as_they_did():
    assert pickle.dumps([("k", Window(0.0, 1.0), 3)], protocol=5) == RECORDS
    assert pickle.loads(RECORDS) == [("k", Window(0.0, 1.0), 3)]
    assert type(pickle.loads(RECORDS)[0][1]) is Window
