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

from kernel.system._cli import COMMANDS, main
from kernel.system._client import Client
from kernel.system._wire import ConnectionLost, KernelSystemError, RequestError

__all__ = ["COMMANDS", "Client", "ConnectionLost", "KernelSystemError", "RequestError", "main"]
