"""Window specs: what the user writes (`Tumbling(1.0)`), and which strategy
keeps that kind of window.

A spec is a value: it checks its numbers, names itself in the flow's step
labels and fingerprint (`repr`), and, when a window operator opens, builds
the strategy that keeps its windows (`strategy(operator)`). It also says
whether its windows can be pre-aggregated per kernel before the exchange
(`pre_aggregates`: windows numbered the same on every kernel, so partials
of one window meet at its owner). Nothing else looks at a spec's kind.
"""

from __future__ import annotations

import math

from ._aligned import SlidingWindows, TumblingWindows, whole_steps
from ._panes import SlidingPanes
from ._sessions import SessionWindows
from ._strategy import WindowStrategy

MAX_WINDOWS_AN_EVENT = 1_000_000  # a sliding window's size / step at most


def _positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value < math.inf):
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    try:
        return float(value)
    except OverflowError:  # (an int past every float, 10**400: float()'s bare error)
        raise ValueError(f"{name} must be a positive number of seconds a float can hold, got an int of "
                         f"{value.bit_length()} bits") from None


class WindowKind:
    """What every window spec offers the window operators."""

    __slots__ = ()
    pre_aggregates = False  # its strategy keeps windows by number (AlignedWindows)

    def strategy(self, operator) -> WindowStrategy:
        """The per-operator logic that keeps this kind of window for
        `operator` (called once, when it opens)."""
        raise NotImplementedError


class Tumbling(WindowKind):
    """Back-to-back windows of `size` seconds: `[k*size, (k+1)*size)`.

    >>> from kernel import Dataflow, run
    >>> from operators import Tumbling
    >>> flow = Dataflow()
    >>> events = flow.from_iterable([("k", t) for t in (0.5, 1.5, 1.9, 4.0)], timestamp=lambda e: e[1])
    >>> out = events.key_by(lambda e: e[0]).window(Tumbling(2.0)).count().collect()
    >>> run(flow)
    >>> [(w.start, w.end, n) for _, w, n in out.items]
    [(0.0, 2.0, 3), (4.0, 6.0, 1)]
    """

    __slots__ = ("size",)
    pre_aggregates = True

    def __init__(self, size: float) -> None:
        self.size = _positive("Tumbling size", size)

    def __repr__(self) -> str:
        return f"Tumbling({self.size!r})"

    def strategy(self, operator) -> TumblingWindows:
        return TumblingWindows(operator, self.size)


class Sliding(WindowKind):
    """Windows of `size` seconds starting every `step` seconds (at multiples
    of `step`); an event is in about `size / step` of them.

    >>> from kernel import Dataflow, run
    >>> from operators import Sliding
    >>> flow = Dataflow()
    >>> events = flow.from_iterable([("k", t) for t in (0.5, 1.5)], timestamp=lambda e: e[1])
    >>> out = events.key_by(lambda e: e[0]).window(Sliding(2.0, 1.0)).count().collect()
    >>> run(flow)
    >>> [(w.start, w.end, n) for _, w, n in out.items]
    [(-1.0, 1.0, 1), (0.0, 2.0, 2), (1.0, 3.0, 1)]
    """

    __slots__ = ("size", "step")
    pre_aggregates = True

    def __init__(self, size: float, step: float) -> None:
        self.size = _positive("Sliding size", size)
        self.step = _positive("Sliding step", step)
        if self.size / self.step > MAX_WINDOWS_AN_EVENT:
            # (each event goes into every one of its windows: Sliding(1.0, 1e-9)
            # hung on its first record, memory growing)
            raise ValueError(f"Sliding({size!r}, {step!r}): an event would be in {self.size / self.step:.3g} "
                             f"windows (size / step); at most {MAX_WINDOWS_AN_EVENT:,} are allowed")

    def __repr__(self) -> str:
        return f"Sliding({self.size!r}, {self.step!r})"

    def strategy(self, operator) -> SlidingWindows:
        span = whole_steps(self.size, self.step)
        if operator.flat and span is not None and span >= 2:  # a combiner's partial half: by slices
            return SlidingPanes(operator, self.size, self.step)
        return SlidingWindows(operator, self.size, self.step)


class Session(WindowKind):
    """Per-key bursts of activity separated by at least `gap` seconds: a
    session runs from its first event to its last event plus `gap`.

    >>> from kernel import Dataflow, run
    >>> from operators import Session
    >>> flow = Dataflow()
    >>> events = flow.from_iterable([("k", t) for t in (0.0, 0.5, 0.9, 5.0)], timestamp=lambda e: e[1])
    >>> out = events.key_by(lambda e: e[0]).window(Session(1.0)).count().collect()
    >>> run(flow)
    >>> [(w.start, w.end, n) for _, w, n in out.items]
    [(0.0, 1.9, 3), (5.0, 6.0, 1)]
    """

    __slots__ = ("gap",)

    def __init__(self, gap: float) -> None:
        self.gap = _positive("Session gap", gap)

    def __repr__(self) -> str:
        return f"Session({self.gap!r})"

    def strategy(self, operator) -> SessionWindows:
        return SessionWindows(operator, self.gap)


def check_window(window) -> None:
    if not isinstance(window, WindowKind):
        raise TypeError(f"a window must be Tumbling, Sliding or Session, got {window!r}")


def check_late(late, step: str) -> None:
    """`late=` is True or False. Anything else was taken for its truth
    value: `late="no"` turned the late stream on."""
    if not isinstance(late, bool):
        raise ValueError(f"{step}: late must be True (late events come out of the .late stream) or False "
                         f"(they are dropped and counted), got {late!r}")
