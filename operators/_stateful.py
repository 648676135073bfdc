"""`StatefulMap`: a user function with a state per key, record at a time.

`fn(state, value) -> (state, out)` runs for every `(key, value)` pair on the
kernel that owns the key; `state` is None the first time a key is seen (and
after `fn` returned None as the state: that forgets the key, so a key's
state can end, and memory with it). `(key, out)` goes on at once, with the
record's event time. The states live in keyed state, so epoch snapshots take
them and a resumed run puts them back.
"""

from __future__ import annotations

from kernel.state import value_state

from kernel.dataflow._errors import PASSES_THROUGH, OperatorError
from kernel.dataflow._operator import Operator

from ._calls import keyed_error
from ._event_time import same_times

_PAIR_HINT = "a stateful_map function must return a pair (new state, output)"


class StatefulMap(Operator):
    """`(key, out)` for every `(key, value)`, where `(state, out) =
    fn(state, value)` and the state is kept per key."""

    def __init__(self, fn) -> None:
        if not callable(fn):
            raise TypeError(f"stateful_map needs a callable fn(state, value) -> (state, out), got {fn!r}")
        self.fn = fn

    def open(self, context):
        self.states = value_state(self, "states")

    def on_batch(self, port, batch):
        states, fn = self.states, self.fn
        get, forget = states.get, states.pop
        out = []
        append = out.append
        record = None
        try:
            for record in batch:
                key = record[0]
                result = fn(get(key), record[1])
                if not isinstance(result, tuple) or len(result) != 2:  # (a namedtuple of two too)
                    raise OperatorError.returned(self.name, fn, result, record=record, hint=_PAIR_HINT)
                state, value = result
                if state is None:
                    forget(key, None)
                else:
                    states[key] = state
                append((key, value))
        except PASSES_THROUGH:
            raise
        except BaseException as exc:
            raise keyed_error(self.name, fn, exc, record) from exc
        self.emit(same_times(out, batch))
