"""A running system of streamkernel jobs: a coordinator holding a catalog
(`_catalog.py`, SQLite) and a job master (`_master.py`: placement, the
job's life, restarts), executors that start job processes on their
machines (`_executor.py`), and the client commands (`_client.py`), all
behind `python -m kernel COMMAND` (`_cli.py`). Connections: JSON requests
over websockets authenticated as the links are (`_wire.py`).

`Client(("host", port), secret)` (an async context manager) sends the
coordinator's requests from a program: `await client.request("status")`,
`"catalog"` (every table's rows), `"job"`, `"wait"`, `"submit"`, `"kill"`,
`"logs"`.

Imports `kernel.net`, `kernel.execution` and `kernel.cli`; nothing below
it (the kernel's core, `net`, `operators`, `state`) imports it.
"""

from typing import TYPE_CHECKING

from kernel.system._cli import COMMANDS, main

if TYPE_CHECKING:
    from kernel.system._client import Client
    from kernel.system._wire import ConnectionLost, KernelSystemError, RequestError

# The client and the wire cost aiohttp (~0.2 s of start-up): imported when
# first asked for, so that `python -m kernel run` (every job an executor
# starts) and the CLI's usage errors do without it.
_LAZY = {"Client": "kernel.system._client", "ConnectionLost": "kernel.system._wire",
         "KernelSystemError": "kernel.system._wire", "RequestError": "kernel.system._wire"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    # with the lazy names (PEP 562): a REPL's completion, `dir()`, help()
    return sorted(set(globals()) | set(__all__))


__all__ = ["COMMANDS", "Client", "ConnectionLost", "KernelSystemError", "RequestError", "main"]
