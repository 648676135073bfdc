"""Keyed state for mid-level operators (Arcon's ValueIndex, MapIndex and
AppenderIndex).

A state object belongs to one operator instance and is created in its
`open()`; it is scoped by key: the operator reads and writes the entry of the
key it is handling. Each kind *is* a `dict` keyed by the record's key, so
operators keep C-speed dict operations on their hot paths
(`collections._count_elements` still takes the fast path on a `ValueState`):

    from state import value_state, map_state, list_state

    class Totals(Operator):
        def open(self, context):
            self.totals = value_state(self, "totals")   # key -> value
            self.seen = map_state(self, "seen")         # key -> {field: value}
            self.log = list_state(self, "log")          # key -> [values]

Creating a state registers it on the operator under its name; the kernel's
epoch snapshots then take every registered state (`Operator.on_epoch`) and a
recovered run puts it back (`Operator.restore`), so an operator that keeps
everything it needs in keyed state is recoverable with no more code. Names
are unique per operator.
"""

from __future__ import annotations


class _KeyedState(dict):
    """A dict keyed by record key, registered on its operator by name."""

    __slots__ = ("name",)
    kind = "state"

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def snapshot(self) -> dict:
        """A copy that later changes to this state do not touch."""
        return dict(self)

    def restore(self, data: dict) -> None:
        self.clear()
        self.update(data)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {len(self)} keys)"


class ValueState(_KeyedState):
    """One value per key: `s[key]`, `s.get(key)`, `s[key] = v`, `del s[key]`."""

    __slots__ = ()
    kind = "value"


class MapState(_KeyedState):
    """A dict per key: `s.entry(key)[field] = v`."""

    __slots__ = ()
    kind = "map"

    def entry(self, key) -> dict:
        """The key's dict, created empty on first use."""
        inner = self.get(key)
        if inner is None:
            inner = self[key] = {}
        return inner

    def snapshot(self) -> dict:
        return {key: dict(inner) for key, inner in self.items()}


class ListState(_KeyedState):
    """A list per key, appended to: `s.append(key, value)`, `s.get(key, [])`."""

    __slots__ = ()
    kind = "list"

    def append(self, key, value) -> None:
        items = self.get(key)
        if items is None:
            self[key] = [value]
        else:
            items.append(value)

    def snapshot(self) -> dict:
        return {key: list(items) for key, items in self.items()}


def _register(operator, state: _KeyedState) -> _KeyedState:
    return operator.register_state(state)  # Operator.register_state: its snapshots take it


def value_state(operator, name: str) -> ValueState:
    """A `ValueState` registered on `operator` (call it in `open`)."""
    return _register(operator, ValueState(name))


def map_state(operator, name: str) -> MapState:
    """A `MapState` registered on `operator` (call it in `open`)."""
    return _register(operator, MapState(name))


def list_state(operator, name: str) -> ListState:
    """A `ListState` registered on `operator` (call it in `open`)."""
    return _register(operator, ListState(name))
