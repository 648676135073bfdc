"""Word count: `python -m kernel.run examples/wordcount.py`.

Counts the words of a small built-in text and prints `word count` lines.
"""

from kernel import Dataflow

TEXT = """\
the kernel runs one event loop per core and schedules dataflow operators
cooperatively in bounded ticks so the host loop stays responsive while the
operators move batches of records as plain lists from one to the next
the words of this text are counted by the pipeline below and printed
"""

flow = Dataflow("wordcount")
(
    flow.from_iterable(TEXT.splitlines())
    .flat_map(str.split)
    .key_by(str.lower)
    .count()
    .map(lambda pair: f"{pair[0]} {pair[1]}")
    .print()
)
