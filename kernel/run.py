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

from kernel._facade import run
from kernel.cli._run import main


class _CallableModule(types.ModuleType):
    def __call__(self, flow, **options):
        return run(flow, **options)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    # A program, not the library: the kernel's warnings (more kernels than
    # CPUs, a resumed state_dir, a refused link...) go to stderr through
    # Python's last-resort handler, unless the pipeline configures logging.
    import logging

    from kernel._logging import LIBRARY_HANDLER

    logging.getLogger("kernel").removeHandler(LIBRARY_HANDLER)
    sys.exit(main())
