"""`WindowJoin`: the inner join of two keyed streams per key and window."""

from __future__ import annotations

from ._windowing import Windowing


class WindowJoin(Windowing):
    """Inner join of two keyed streams (ports 0 and 1) per key and window:
    `(key, window, (left, right))` for every pair, in arrival order. A
    window's accumulator is its two sides' values, `([lefts], [rights])`."""

    def __init__(self, window, late: bool = False) -> None:
        super().__init__(window, late)

    def _new(self, value, stamp, port):
        sides: tuple[list, list] = ([], [])
        sides[port].append(value)
        return sides

    def _grow(self, acc, value, stamp, port):
        acc[port].append(value)
        return acc

    @staticmethod
    def _merge(a, b):
        a[0].extend(b[0])
        a[1].extend(b[1])
        return a

    _adds = None

    def _results(self, key, window, acc):
        lefts, rights = acc
        return [(key, window, (left, right)) for left in lefts for right in rights]

    def _emit_window(self, j, accs: dict) -> None:
        window = self._windows.window(j)
        for key, acc in accs.items():
            self._out.extend(self._results(key, window, acc))

    def _function(self):
        return "join"
