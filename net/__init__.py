"""Transports between kernels.

Inside one kernel, operators hand batches to each other as plain lists
(`kernel._runtime`). Shared-memory SPSC rings between cores and websocket
links between machines live here as they are built (issues 3 and 6).
"""

__all__: list[str] = []
