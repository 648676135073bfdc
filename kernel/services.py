"""Calling service topics (`flow.serve(name, handler)` in a running job)
from any job or app:

    import kernel.services

    reply = kernel.services.call("config", {"key": "x"}, coordinator="HOST:PORT")

    async with kernel.services.connect("config") as svc:   # pipelined
        replies = await asyncio.gather(*(svc.call(r) for r in requests))

The coordinator is `coordinator=` or KERNEL_COORDINATOR; the secret
KERNEL_SECRET. A handler's failure raises `ServiceError` with its text.
"""

from kernel.topics._errors import ServiceError, TopicError
from kernel.topics._services import ServiceClient, call, connect

__all__ = ["ServiceClient", "ServiceError", "TopicError", "call", "connect"]
