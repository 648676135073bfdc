"""What the interpreter itself keeps in the collector's permanent
generation, read when the library is imported (`kernel/__init__.py`
imports this module first thing): a run on the caller's loop freezes the
host's heap only where nothing more is frozen (execution/_host_gc.py).
Python 3.12's collector moves the immortal objects it finds there (375
tuples in a fresh 3.12.1), so its freeze count is never 0."""

import gc

INTERPRETER_FROZEN = gc.get_freeze_count()
