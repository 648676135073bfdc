"""A thread-per-core cooperative dataflow kernel for asyncio.

    from kernel import Dataflow, run

    flow = Dataflow("wordcount")
    counts = (flow.from_iterable(lines).flat_map(str.split)
                  .key_by(lambda w: w).count().collect())
    run(flow)
    dict(counts.items)

Three levels of API: the fluent `Dataflow` (high), `Operator` / `Source`
subclasses plugged in with `stream.apply()` (mid), and `kernel.lowlevel`:
`Kernel`, `spawn`, `cooperate` (low).
"""

from typing import TYPE_CHECKING


def _find_a_checkouts_subpackages() -> None:
    """`kernel.net`, `kernel.operators` and `kernel.state` from the folders
    beside this one where `kernel` is a checkout's folder (pyproject.toml's
    package-dir builds them from there). Installed, they are folders inside
    it, and the editable install's own finder maps them; but where the
    checkout comes first on sys.path (`pip install .`, then `python -m
    kernel.run examples/wordcount.py` in it: the README's first line) no
    one did, and the run failed: No module named 'kernel.net'."""
    import os
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    folders = {f"kernel.{name}": os.path.join(os.path.dirname(here), name)
               for name in ("net", "operators", "state")}
    if os.path.isdir(os.path.join(here, "net")) or not os.path.isdir(folders["kernel.net"]):
        return  # installed, or no checkout
    from importlib.util import spec_from_file_location

    # (a finder is any object with find_spec: importlib.abc's MetaPathFinder
    # would bring importlib.resources and tempfile, ~10 ms, to every start)
    class CheckoutSubpackages:
        def find_spec(self, fullname, path=None, target=None):
            folder = folders.get(fullname)
            if folder is None or not os.path.isfile(os.path.join(folder, "__init__.py")):
                return None
            return spec_from_file_location(fullname, os.path.join(folder, "__init__.py"),
                                           submodule_search_locations=[folder])

    if not any(type(finder).__name__ == "CheckoutSubpackages" for finder in sys.meta_path):
        sys.meta_path.append(CheckoutSubpackages())


_find_a_checkouts_subpackages()

import kernel._interpreter_gc  # noqa: E402  (the interpreter's own frozen objects, read now)
import kernel._logging  # noqa: E402, F401  (a NullHandler on the library's loggers)

if TYPE_CHECKING:
    from kernel._facade import run, run_async
    from kernel.dataflow._api import (
        Collected,
        Dataflow,
        KeyedStream,
        LateCount,
        Stream,
        WindowedStream,
        WindowResults,
    )
    from kernel.dataflow._errors import ActivationError, KernelError, OperatorError, TaskError
    from kernel.dataflow._operator import Operator, Source, TimedBatch
    from kernel.execution._standard_input import StandardInputError
    from kernel.execution._supervisor import KernelProcessError
    from kernel.scheduling._clock import Clock, SystemClock, VirtualClock
    from kernel.scheduling._kernel import Kernel, KernelContext, cooperate, current_kernel
    from kernel.scheduling._scheduler import LATENCY, THROUGHPUT

# Each name is imported from its module when first asked for: `python -m
# kernel status` (or a coordinator, an executor), whose modules sit under
# this package, does without the fluent API's (~0.1 s of start-up).
_HOMES = {
    "run": "kernel._facade", "run_async": "kernel._facade",
    **dict.fromkeys(["Collected", "Dataflow", "KeyedStream", "LateCount", "Stream", "WindowedStream",
                     "WindowResults"], "kernel.dataflow._api"),
    **dict.fromkeys(["ActivationError", "KernelError", "OperatorError", "TaskError"],
                    "kernel.dataflow._errors"),
    **dict.fromkeys(["Operator", "Source", "TimedBatch"], "kernel.dataflow._operator"),
    "KernelProcessError": "kernel.execution._supervisor",
    "StandardInputError": "kernel.execution._standard_input",
    **dict.fromkeys(["Clock", "SystemClock", "VirtualClock"], "kernel.scheduling._clock"),
    **dict.fromkeys(["Kernel", "KernelContext", "cooperate", "current_kernel"], "kernel.scheduling._kernel"),
    **dict.fromkeys(["LATENCY", "THROUGHPUT"], "kernel.scheduling._scheduler"),
}


def __getattr__(name: str):
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    # with the lazy names (PEP 562): a REPL's completion, `dir()`, help()
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "LATENCY",
    "THROUGHPUT",
    "ActivationError",
    "Clock",
    "Collected",
    "Dataflow",
    "Kernel",
    "KernelContext",
    "KernelError",
    "KernelProcessError",
    "KeyedStream",
    "LateCount",
    "Operator",
    "OperatorError",
    "Source",
    "StandardInputError",
    "Stream",
    "SystemClock",
    "TaskError",
    "TimedBatch",
    "VirtualClock",
    "WindowResults",
    "WindowedStream",
    "cooperate",
    "current_kernel",
    "run",
    "run_async",
]
