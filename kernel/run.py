"""`python -m kernel.run pipeline.py[:name] [--cores N]` (see `kernel.cli._run`).

`kernel.run` is also the name of the blocking `run()` function. Importing
this module binds the name `run` on the package to the module, so the module
is made callable and forwards to the function: `kernel.run(flow)` keeps
working after `import kernel.run`. The module holds the function under its
own name too, so that `from kernel.run import run` gives the function (it
was an ImportError).
"""

import sys
import types
from typing import TYPE_CHECKING

__all__ = ["main", "run"]  # (`from kernel.run import *`: the names __getattr__ gives)

if TYPE_CHECKING:
    # A type checker sees the two names as the functions, with their
    # signatures: from a module-level __getattr__ it took `run` for Any, and
    # any name at all (`from kernel.run import rnu`) for one that exists.
    from kernel._facade import run
    from kernel.cli._run import main
else:
    def __getattr__(name: str):
        # `run` (the function) and `main` (the command line's) are imported when
        # first asked for: `python -m kernel.run --help`, or a usage error, is
        # said before the fluent API and the run's machinery are imported
        # (kernel.cli._run imports them once the command line holds together).
        if name == "run":
            from kernel._facade import run

            return run
        if name == "main":
            from kernel.cli._run import main

            return main
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted({*globals(), *__all__})


class _CallableModule(types.ModuleType):
    def __call__(self, flow, **options):
        from kernel._facade import run

        return run(flow, **options)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    # A program, not the library: the kernel's warnings (more kernels than
    # CPUs, a resumed state_dir, a refused link...) go to stderr through
    # Python's last-resort handler, unless the pipeline configures logging.
    import logging

    from kernel._logging import LIBRARY_HANDLER
    from kernel.cli._run import main

    logging.getLogger("kernel").removeHandler(LIBRARY_HANDLER)
    sys.exit(main())
