"""Stateless chains fused: one generated comprehension per batch.

Adjacent `map`, `filter`, `flat_map`, `key_by`, `map_values` and `inspect`
steps on one kernel (chained edges, `Operator.fuse_upstream`) run as one
handler. Each run of two or more of them but `flat_map` is a single list
comprehension, generated once per chain when the run starts:

    [v3
     for v0 in it
     for v1 in (f0(v0),)            # map
     if f1(v1)                      # filter
     for v2 in ((f2(v1), v1),)      # key_by
     for k3, w3 in (v2,)            # map_values
     for v3 in ((k3, f3(w3)),)]

No list between the steps, no `emit` and no activation per step: a map,
filter, map, key_by, map_values chain over 1,000,000 records takes ~20%
less CPU than the steps apart (`map()` each, `compress`). A `flat_map`,
and a step alone, run as themselves between such comprehensions (see
`FusedChain`). A flat_map's large output comes in pieces, and the steps
after it take one piece at a time (`FusedChain.run_in_pieces`).

Errors stay the steps' own. Each clause is on a line of its own, so when a
user function raises, the comprehension's frame in the traceback says by
its line which step was running, and on Python 3.11 by its locals which
record that step had (its input, as the step alone would name it; nothing
is called twice; and where a step before it would fail on a later record
of the batch, that error, which it would have been apart: `_fail_as_apart`).
Python 3.12 inlines comprehensions (PEP 709) and undoes the variables
they bind with `for` when an exception leaves them: there the steps that
make a variable bind it with `:=` instead (`_CLAUSES_ASSIGNED`), which
stays in the frame, and the failing instruction tells a filter's call
from its result's test, so nothing is called twice there either.
A `StopIteration` from the function of a `map` or a `filter` is reported as
those steps report it apart (they use `map()`, which it would silently end).
"""

from __future__ import annotations

import dis
import itertools
import sys
from collections.abc import Callable, Iterator
from typing import NamedTuple

from kernel.dataflow._errors import PASSES_THROUGH, STEPS_BY_LINE, OperatorError, is_not_a_pair, not_a_pair
from kernel.dataflow._operator import TimedBatch

from ._accessors import IDENTITY, accessor
from ._calls import STOP_ENDS_BATCH, call_each, failing_index

# step kind -> its clauses, one a line ({f}: the function, {v}: the input
# variable, {o}: the output variable, {i}: the step's number), and whether
# it makes a new variable; filter and inspect pass their input on as it is.
_CLAUSES = {
    "map": (["for {o} in ({f}({v}),)"], True),
    "filter": (["if {f}({v})"], False),
    # unpacked as `for k, v in batch` apart, so a record that is no pair
    # fails the same way
    "map_values": (["for k{i}, w{i} in ({v},)", "for {o} in ((k{i}, {f}(w{i})),)"], True),
    "key_by": (["for {o} in (({f}({v}), {v}),)"], True),
    # the result bound, not tested: a result without a truth value (a numpy
    # array, a DataFrame) must not fail a step that ignores it
    "inspect": (["for _{i} in ({f}({v}),)"], False),
}
# From Python 3.12 a list comprehension is inlined in its function (PEP
# 709), and the variables it binds with `for` are undone when an exception
# leaves it: the failing step's input would be gone. One bound by `:=` is
# the function's own and stays in the traceback's frame, so there the
# steps that make a variable bind it so (`is` on the same object: always
# true, and no user code runs, as a truth test could). It costs: ~11 ns a
# record for each step so bound (a map, filter, key_by chain of lambdas
# over 1,000 records, timeit: 352 -> 375 us on 3.12), the last step's not
# (its output is no step's input).
_CLAUSES_ASSIGNED = {
    **_CLAUSES,
    "map": (["if ({o} := {f}({v})) is {o}"], True),
    "map_values": (["for k{i}, w{i} in ({v},)", "if ({o} := (k{i}, {f}(w{i}))) is {o}"], True),
    "key_by": (["if ({o} := ({f}({v}), {v})) is {o}"], True),
}
_ASSIGNED = sys.version_info >= (3, 12)  # tests set it to take that way on 3.11 too
_ONE_TO_ONE = frozenset(("map", "map_values", "key_by", "inspect"))
# Steps that run their function through `map()` apart: a StopIteration it
# raises would end the batch silently there, so they report it as this.
_MAPPED = frozenset(("map", "filter"))
_chains = itertools.count()
_READ_FRAME_LOCALS = True  # tests turn it off: the failing record worked out again
# Before 3.12 a filter's test of its function's result fails on the
# comprehension's first line, and a failure on the filter's own line is
# its function's.
_TESTS_ON_THEIR_LINE = sys.version_info >= (3, 12)


class Stage(NamedTuple):
    kind: str  # a key of _CLAUSES, or "flat_map"
    fn: object
    name: str  # the step's name, for errors
    transform: Callable[[list], list]  # the step alone: batch in, batch out
    # a flat_map's output in pieces (`FlatMap.pieces`): batch in, (its
    # output, None) or (its first piece, an iterator of the next ones)
    pieces: Callable[[list], tuple[list, Iterator[list] | None]] | None = None


class FusedChain:
    """The steps of a chain as segments run one after the other: each run
    of two or more steps but `flat_map` as one comprehension; a step alone,
    and every `flat_map`, as itself (`map()` over a batch beats a
    comprehension of one call, and a flat_map's C-level `extend` beats
    one iteration of the comprehension per record it makes: word count
    was 6% slower with its `str.split` in a comprehension)."""

    def __init__(self, stages: list[Stage]) -> None:
        self.one_to_one = one_to_one(stages)
        # A flat_map's output may come in pieces (a large one: `FlatMap.pieces`),
        # and each goes through the steps after it: `run_in_pieces`.
        self.in_pieces = any(stage.kind == "flat_map" for stage in stages)
        segments, splits, run = [], [], []  # splits[i]: segment i is a flat_map's pieces
        for stage in [*stages, None]:
            if stage is not None and stage.kind != "flat_map":
                run.append(stage)
                continue
            if len(run) > 1:
                segments.append(_Comprehension(run).run)
            elif run:
                segments.append(run[0].transform)
            splits.extend([False] * bool(run))
            if stage is not None:
                segments.append(stage.pieces)
                splits.append(True)
            run = []
        self.segments = segments
        self.splits = splits
        if len(segments) == 1:
            if self.in_pieces:
                self.run_in_pieces = segments[0]
            else:
                self.run = segments[0]

    def run(self, batch: list) -> list:
        """The chain's output for `batch` (a chain with no flat_map)."""
        for segment in self.segments:
            batch = segment(batch)
        return batch

    def run_in_pieces(self, batch: list, start: int = 0) -> tuple[list, Iterator[list] | None]:
        """The output for `batch` of the segments from `start` on: (all of
        it, None), or where a flat_map's output comes in pieces, (the first
        through the segments after it, an iterator of the next ones, each
        through them as it is read)."""
        segments, splits = self.segments, self.splits
        for at in range(start, len(segments)):
            if not splits[at]:
                batch = segments[at](batch)
                continue
            batch, rest = segments[at](batch)
            if rest is not None:
                pieces = self._through(at + 1, itertools.chain((batch,), rest))
                return next(pieces), pieces
        return batch, None

    def _through(self, start: int, pieces) -> Iterator[list]:
        """Each of `pieces` through the segments from `start` on, in order
        (a flat_map among them may make pieces of its own of each)."""
        for piece in pieces:
            out, rest = self.run_in_pieces(piece, start)
            yield out
            if rest is not None:
                yield from rest


def one_to_one(stages) -> bool:
    return all(stage.kind in _ONE_TO_ONE for stage in stages)


def changes_counts_at(stages) -> int | None:
    """The one stage whose output may have another number of records than
    its input (a filter, a flat_map), or None when every stage hands on
    what it was given; -1 when several may (metrics then cannot tell the
    records between them: `kernel.runtime.Runtime._fuse`)."""
    at = [i for i, stage in enumerate(stages) if stage.kind not in _ONE_TO_ONE]
    return at[0] if len(at) == 1 else (None if not at else -1)


class _Comprehension:
    """The generated comprehension over `stages`, plain and timed."""

    def __init__(self, stages: list[Stage]) -> None:
        self.stages = stages
        self.one_to_one = one_to_one(stages)
        self.filename = f"<fused chain {next(_chains)}>"
        self.line_stage: dict[int, tuple[int, str]] = {}  # line -> (stage, its input variable)
        # A function that only reads its record runs as its C getter, and one
        # that returns it as it is not at all (`_accessors`; errors still
        # name stage.fn: `_error`).
        self.fast = [accessor(stage.fn) for stage in stages]
        namespace = {f"f{i}": stage.fn if fast is None else fast
                     for i, (stage, fast) in enumerate(zip(stages, self.fast))}
        exec(compile(self._source(), self.filename, "exec"), namespace)  # our text; the functions by name
        # which step each clause's line runs, read from a frame's globals by the
        # watchdog (a report names the step blocked: kernel/runtime/_blocked_step.py)
        namespace[STEPS_BY_LINE] = {line: (stages[step].name, stages[step].fn)
                                    for line, (step, _) in self.line_stage.items()}
        self.plain = namespace["plain"]
        self.timed = namespace["timed"]

    def _source(self) -> str:
        body: list[tuple[str, int, str]] = []  # (clause, its step, the step's input variable)
        variable = "v0"
        last = len(self.stages) - 1
        for i, stage in enumerate(self.stages):
            # (the last step's output is no step's input: no error needs it)
            clauses, makes = (_CLAUSES_ASSIGNED if _ASSIGNED and i < last else _CLAUSES)[stage.kind]
            output = f"v{i + 1}" if makes else variable
            for clause in clauses:
                if self.fast[i] is IDENTITY:
                    clause = clause.replace("{f}({v})", "{v}").replace("{f}(w{i})", "w{i}")
                body.append((clause.format(f=f"f{i}", v=variable, o=output, i=i), i, variable))
            variable = output
        lines = [""]  # line 1 is blank: line numbers below count from 1
        for header in (["def plain(it):", f"    return [{variable}", "        for v0 in it"],
                       ["def timed(it, stamps):", f"    return [({variable}, t)",
                        "        for v0, t in zip(it, stamps)"]):
            lines.extend(header)
            for clause, step, given in body:
                lines.append("        " + clause)
                self.line_stage[len(lines)] = (step, given)
            lines[-1] += "]"
        return "\n".join(lines) + "\n"

    def run(self, batch: list) -> list:
        """The chain's output for `batch` (a TimedBatch keeps each output
        record at its input record's time)."""
        it = iter(batch)
        try:
            if batch.__class__ is not TimedBatch:
                return self.plain(it)
            if self.one_to_one:
                return TimedBatch(self.plain(it), batch.timestamps)
            pairs = self.timed(it, batch.timestamps)
            return TimedBatch([p[0] for p in pairs], [p[1] for p in pairs])
        except PASSES_THROUGH:
            raise
        except BaseException as exc:
            raise self._error(exc, batch, it) from exc

    def _error(self, exc: BaseException, batch: list, it) -> OperatorError:
        """The error the failing step would raise apart: its name, its
        function and the record it was given."""
        where = ours = None
        tb = exc.__traceback__
        while tb is not None:
            if tb.tb_frame.f_code.co_filename == self.filename:
                ours = tb
                if tb.tb_lineno in self.line_stage:
                    where = (tb.tb_lineno, tb.tb_frame, tb.tb_lasti)
            tb = tb.tb_next
        tested_at = self._filter_tested_at(ours) if where is None and ours is not None else None
        if tested_at is not None:
            # 3.11 puts a filter's test of its function's result (a numpy
            # array's "truth value is ambiguous") on the comprehension's
            # first line, not the clause's; the instruction that failed is
            # that filter's jump, and its input is in the frame, as it failed
            index, variable = tested_at, self._input_variable(tested_at)
            stage = self.stages[index]
            record = ours.tb_frame.f_locals[variable]
            tested = True
        elif where is None:
            # (a frame without the filter's input: the failing record goes
            # through the steps once more; a result that failed its test
            # only once: the first filter)
            index = self._failing_test(batch, it)
            if index is None:
                index = next((i for i, stage in enumerate(self.stages) if stage.kind == "filter"), None)
            if index is None:  # nothing found (cannot happen): name the chain's first step
                stage = self.stages[0]
                return OperatorError.wrap(stage.name, stage.fn, exc, has_record=False)
            stage = self.stages[index]
            record = self._input_of(index, batch, it)
            tested = True
        else:
            line, frame, instruction = where
            index, variable = self.line_stage[line]
            stage = self.stages[index]
            local = frame.f_locals
            if _READ_FRAME_LOCALS and variable in local:  # the frame, as it failed (3.12: `_ASSIGNED`)
                record = local[variable]
            else:  # the batch's own record (v0), or the variables gone: worked out again
                record = self._input_of(index, batch, it)
            # from 3.12 on, a filter's test fails on its own line too:
            # the instruction that failed tells whether its function
            # raised (a call) or its result's test did
            tested = (_TESTS_ON_THEIR_LINE and stage.kind == "filter"
                      and _is_truth_test(frame.f_code, instruction))
        self._fail_as_apart(index, batch, it, tested)
        problem = exc
        if isinstance(exc, StopIteration) and stage.kind in _MAPPED:
            problem = RuntimeError(STOP_ENDS_BATCH)
        if stage.kind == "map_values" and is_not_a_pair(record):  # (a loop's feedback on a keyed stream)
            return not_a_pair(stage.name, problem, record)
        return OperatorError.wrap(stage.name, stage.fn, problem, record=record)

    def _filter_tested_at(self, tb) -> int | None:
        """The filter whose test of its function's result failed at `tb`
        (our comprehension's frame, stopped at a conditional jump: the
        filters' jumps come in their order, and nothing else jumps on a
        condition there), or None (another instruction, or its input not
        in the frame: Python 3.12's inlined comprehensions)."""
        if not _READ_FRAME_LOCALS:
            return None
        filters = [i for i, stage in enumerate(self.stages) if stage.kind == "filter"]
        jumps = [ins.offset for ins in dis.get_instructions(tb.tb_frame.f_code)
                 if ins.opname.startswith("POP_JUMP") and "_IF_" in ins.opname]
        if len(jumps) != len(filters) or tb.tb_lasti not in jumps:
            return None
        index = filters[jumps.index(tb.tb_lasti)]
        return index if self._input_variable(index) in tb.tb_frame.f_locals else None

    def _input_variable(self, step: int) -> str:
        return next(given for line, (at, given) in self.line_stage.items() if at == step)

    def _fail_as_apart(self, step: int, batch: list, it, tested: bool = False) -> None:
        """Apart, each step takes the whole batch before the next begins:
        a step before `step` that fails on a record after the one that
        failed here would have failed first. Run those steps, apart, on the
        records the comprehension had not reached (each function is called
        on each record once, as apart), raising the first such error. A
        filter whose result failed its test (`tested`) had called its
        function on every record first, apart: that too, on those records."""
        index = failing_index(batch, it)
        if index is None:
            return
        rest = list(batch[index + 1 :])
        for stage in self.stages[:step]:
            if not rest:
                return
            rest = stage.transform(rest)
        if tested and rest:
            failing = self.stages[step]
            call_each(failing.name, failing.fn, rest)

    def _failing_test(self, batch: list, it) -> int | None:
        """The filter whose function's result had no truth value, for the
        batch's failing record (the iterator stopped at it): the steps are
        run on it once more, as `_input_of` does, the filters too (on this
        error path only), up to the one whose result's test fails."""
        index = failing_index(batch, it)
        if index is None:
            return None
        value = batch[index]
        for step, stage in enumerate(self.stages):
            if stage.kind == "filter":
                try:
                    if not stage.fn(value):
                        return None
                except PASSES_THROUGH:
                    raise
                except BaseException:  # whatever `run` caught, this filter raising it again
                    return step
            else:
                value = _through(stage, value)
        return None

    def _input_of(self, step: int, batch: list, it):
        """What step `step` was given, from the batch's failing record (the
        iterator stopped at it): the steps before it that change a record
        (map, key_by, map_values) are called on it again; filters and
        inspects, which let it by, are not."""
        index = failing_index(batch, it)
        if index is None:
            return None
        value = batch[index]
        for stage in self.stages[:step]:
            value = _through(stage, value)
        return value


def _is_truth_test(code, offset: int) -> bool:
    """Whether the instruction at `offset` of `code` tests a value's truth
    (3.13's TO_BOOL, 3.12's conditional jump), not a call."""
    for instruction in dis.get_instructions(code):
        if instruction.offset == offset:
            name = instruction.opname
            return name == "TO_BOOL" or (name.startswith("POP_JUMP") and "_IF_" in name)
    return False


def _through(stage: Stage, value):
    """`value` as the step `stage` hands it on: changed by a map, key_by
    or map_values (their functions called), as it is past the others."""
    if stage.kind == "map":
        return stage.fn(value)
    if stage.kind == "key_by":
        return (stage.fn(value), value)
    if stage.kind == "map_values":
        return (value[0], stage.fn(value[1]))
    return value
