"""Window aggregations: how a window's accumulator grows.

`WindowAggregate` keeps one accumulator per key and window; the aggregation
starts it (`create`), grows it (`add`), joins two when sessions merge
(`merge`) and makes the emitted result of it (`result`). `fold` and `reduce`
see a window's values in arrival order; `collect` gives them in timestamp
order (ties in arrival order).
"""

from __future__ import annotations

from operator import itemgetter

from kernel.dataflow._arity import check_arity, check_not_async

from .._calls import start_values

_first = itemgetter(0)


class Aggregation:
    """`create(value)` starts an accumulator, `add(acc, value)` grows it,
    `merge(a, b)` joins two when sessions merge (None: a session keeps its
    raw values and aggregates them in arrival order when it closes, which
    holds more memory but needs nothing of the function), `result(acc)` is
    what is emitted."""

    name = "aggregation"
    function = None  # the user's function, named in errors

    def create(self, value, stamp, port=0):
        raise NotImplementedError

    def add(self, acc, value, stamp, port=0):
        raise NotImplementedError

    merge = None

    def result(self, acc):
        return acc

    def combine(self):
        """The function that joins two kernels' accumulators of one key and
        window (`window_combiner`), or None: the aggregation cannot be split
        around the exchange (its accumulators are not its results, or do not
        join)."""
        return None


class CountAggregation(Aggregation):
    name = "count"

    def create(self, value, stamp, port=0):
        return 1

    def add(self, acc, value, stamp, port=0):
        return acc + 1

    @staticmethod
    def merge(a, b):
        return a + b

    def combine(self):
        return _add  # partial counts add up


class SumAggregation(Aggregation):
    """No merge: `+` need not be commutative (str, list) nor exact in any
    order (float), so merged sessions add their values in arrival order."""

    name = "sum"

    def create(self, value, stamp, port=0):
        return value

    def add(self, acc, value, stamp, port=0):
        return acc + value

    def combine(self):
        return _add  # partial sums add up


class ReduceAggregation(Aggregation):
    """No merge, as for sum: merged sessions reduce their values in arrival
    order, so `fn` need not be commutative."""

    name = "reduce"

    def __init__(self, fn) -> None:
        if not callable(fn):
            raise TypeError(f"reduce needs a callable, got {fn!r}")
        check_not_async(fn, "reduce")
        check_arity(fn, 2, "reduce", "two values (a, b)")
        self.function = fn

    def create(self, value, stamp, port=0):
        return value

    def add(self, acc, value, stamp, port=0):
        return self.function(acc, value)

    def combine(self):
        return self.function  # associative, as reduce after key_by


class FoldAggregation(Aggregation):
    """No merge: for sessions the values are kept (in arrival order) and
    folded when the session is emitted."""

    name = "fold"

    def __init__(self, init, fn) -> None:
        if not callable(fn):
            raise TypeError(f"fold needs a callable, got {fn!r}")
        check_not_async(fn, "fold")
        check_arity(fn, 2, "fold", "the accumulator and a value")
        self.init = start_values(init)
        self.function = fn

    def create(self, value, stamp, port=0):
        return self.function(self.init(), value)

    def add(self, acc, value, stamp, port=0):
        return self.function(acc, value)


class TopAggregation(Aggregation):
    """The `k` largest values by `by(value)`, largest first; of equal ones
    the earlier arrival first. The accumulator is `[(by(v), v)]` in that
    order, at most `k` long. No merge: for sessions the values are kept and
    ranked in arrival order when the session closes."""

    name = "top"

    def __init__(self, k: int, by=None) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"top(k) needs a whole number k >= 1, got {k!r}")
        if by is not None and not callable(by):
            raise TypeError(f"top(by=...) needs a function of the value, got {by!r}")
        if by is not None:
            check_not_async(by, "top")
            check_arity(by, 1, "top", "one value (by=)")
        self.k = k
        self.by = by
        self.function = by  # named in errors (None: the values are compared themselves)

    def create(self, value, stamp, port=0):
        return [(value if self.by is None else self.by(value), value)]

    def add(self, acc, value, stamp, port=0):
        rank = value if self.by is None else self.by(value)
        # after every entry ranked >= it: ties keep arrival order
        i = len(acc)
        while i and acc[i - 1][0] < rank:
            i -= 1
        if i < self.k:
            acc.insert(i, (rank, value))
            del acc[self.k:]
        return acc

    def result(self, acc):
        return [value for _, value in acc]


class CollectAggregation(Aggregation):
    """The window's values, in timestamp order (ties in arrival order)."""

    name = "collect"

    def create(self, value, stamp, port=0):
        return [(stamp, value)]

    def add(self, acc, value, stamp, port=0):
        acc.append((stamp, value))
        return acc

    @staticmethod
    def merge(a, b):
        return a + b

    def result(self, acc):
        acc.sort(key=_first)
        return [value for _, value in acc]


def _add(a, b):
    return a + b
