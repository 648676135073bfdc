"""When the partial half of a window combiner pre-aggregates, and when it
passes its batches on unaggregated.

A partial costs its sender an aggregation and its owner a merge; it pays
where it stands for several records. With 1,000 keys, ~1.6 events per key
and window and 2 kernels, each kernel's partials were 79% of its records,
and pre-aggregating made both kernels slower than one (benches/pipelines.py
windowed sum, measured per kernel: ~260 ms of kernel time with partials,
~150 ms passing records on). So the partial half measures, over a window's
lifetime, how many accumulators its records create, and above
_PASS_ON_ABOVE per record passes batches on to the owner (`WindowMerge`
aggregates them), going back to aggregating every _PASSED_BEFORE_PROBE
batches to measure again. A sliding window of whole steps is
pre-aggregated by slices (`_panes.py`): what is measured is then the
slices' accumulators, and "a window" a slice (NEXMark q5: 0.13 a record by
slice, 0.64 by window).

The constants are read when they are used, so tests may set them on this
module before a run.
"""

from __future__ import annotations

# The partial half passes batches on while its records create more than this
# many accumulators each (over a window's lifetime). Both sides of the
# exchange pay about as much per partial as per record, so a partial that
# stands for fewer than two records costs more than it saves.
_PASS_ON_ABOVE = 0.5
_PASSED_BEFORE_PROBE = 64  # batches passed on before measuring again
_MEASURE_AT_LEAST = 2048  # records a measurement needs
_START_PASSING = False  # pre-aggregate until measured (tests start passing on)


class PassOnPolicy:
    """One partial half's measurement and decision. `passing`: pass batches
    on instead of aggregating them. A measurement spans `windows_to_measure`
    emitted windows: a whole window's lifetime, so keys that repeat across
    batches count as repeats."""

    __slots__ = ("added", "created", "fired", "passed", "passing", "windows_to_measure")

    def __init__(self, windows_to_measure: int) -> None:
        self.windows_to_measure = windows_to_measure
        self.passing = _START_PASSING
        self.passed = 0  # batches passed on since the last measurement
        self._restart()

    def _restart(self) -> None:
        self.created = self.added = self.fired = 0  # accumulators created, records added, windows fired

    def passed_on(self) -> None:
        """A batch went on unaggregated; after enough, measure again."""
        self.passed += 1
        if self.passed >= _PASSED_BEFORE_PROBE:
            self.passing = False
            self._restart()

    def aggregated(self, created: int, added: int) -> None:
        """A batch of `added` records created `created` accumulators."""
        self.created += created
        self.added += added

    def windows_fired(self, fired: int) -> None:
        """`fired` windows were emitted: decide once a measurement is complete."""
        self.fired += fired
        if self.passing or self.fired < self.windows_to_measure or self.added < _MEASURE_AT_LEAST:
            return
        self.passing = self.created > _PASS_ON_ABOVE * self.added
        self.passed = 0
        self._restart()
