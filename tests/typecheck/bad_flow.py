"""Mistakes a type checker must find in a pipeline: tests/test_typing.py runs
`mypy --strict` on this file and expects, on each line whose comment is
`E:` and a text, an error whose message contains the text; and on no other
line an error."""

from __future__ import annotations

import math

from kernel.operators import Tumbling

from kernel import Dataflow, Stream, run

flow = Dataflow("mistakes")
words = flow.from_iterable(["to", "be"])
numbers = flow.from_iterable([1.0, 4.0], timestamp=lambda x: x)
keyed = words.key_by(len)  # KeyedStream[int, str]

# a function of the wrong record type
words.map(math.sqrt)  # E: Argument 1 to "map" of "Stream" has incompatible type
words.filter(math.isnan)  # E: Argument 1 to "filter" of "Stream" has incompatible type
words.flat_map(len)  # E: Argument 1 to "flat_map" of "Stream" has incompatible type
words.sink(math.floor)  # E: Argument 1 to "sink" of "Stream"
keyed.map_values(math.sqrt)  # E: Argument 1 to "map_values" of "KeyedStream" has incompatible type

# keyed operations on a stream that is not keyed (key_by first)
words.count()  # E: "Stream[str]" has no attribute "count"
numbers.sum()  # E: "Stream[float]" has no attribute "sum"
words.reduce(max)  # E: "Stream[str]" has no attribute "reduce"
words.map_values(str.upper)  # E: "Stream[str]" has no attribute "map_values"
numbers.window(Tumbling(1.0))  # E: "Stream[float]" has no attribute "window"

# a reduce function of the wrong arity or type
keyed.reduce(lambda a: a)  # E: Argument 1 to "reduce" of "KeyedStream" has incompatible type
keyed.reduce(math.hypot)  # E: Argument 1 to "reduce" of "KeyedStream" has incompatible type
keyed.window(Tumbling(1.0)).reduce(len)  # E: Argument 1 to "reduce" of "WindowedStream"

# a fold whose function does not take (accumulator, value)
keyed.fold(0, lambda acc, w: acc + w)  # E: Unsupported operand types for + ("int" and "str")

# sum() of values without `+`
words.key_by(len).map_values(lambda w: object()).sum()  # E: Invalid self argument "KeyedStream[int, object]"

# not a window
keyed.window(1.0)  # E: Argument 1 to "window" of "KeyedStream" has incompatible type "float"

# a join needs a keyed stream, keyed by the same type
keyed.join(words, Tumbling(1.0))  # E: of "KeyedStream" matches argument types "Stream[str]", "Tumbling"
by_word = words.key_by(str)
keyed.join(by_word, Tumbling(1.0))  # E: incompatible type "KeyedStream[str, str]"; expected "KeyedStream[int

# sources: the wrong kind of function
flow.from_partitions(lambda index: range(index))  # E: Argument 1 to "from_partitions" of "Dataflow"
flow.from_iterable(["a"], timestamp=str.upper)  # E: Argument "timestamp" to "from_iterable" of "Dataflow"
flow.from_iterable(3)  # E: Argument 1 to "from_iterable" of "Dataflow" has incompatible type "int"

# reading the results as the wrong type
counts = keyed.count().collect()
first_word: str = counts.items[0][1]  # E: (expression has type "int", variable has type "str")
windows = keyed.window(Tumbling(1.0)).count().collect()
for key, window, _ in windows.items:
    window.upper()  # E: "Window" has no attribute "upper"
    key.upper()  # E: "int" has no attribute "upper"
lengths: Stream[int] = words  # E: (expression has type "Stream[str]", variable has type "Stream[int]")

run(flow)
run(words)  # E: Argument 1 to "run" has incompatible type "Stream[str]"; expected "Dataflow"
