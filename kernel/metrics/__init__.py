"""Metrics of a running flow, served in Prometheus's text format.

* `Runtime.metrics_snapshot()` (kernel/runtime) is what one kernel has done
  so far, as plain data: records in and out per step (counted per batch),
  watermarks, late events, busy seconds, stalls, backpressured seconds.
* `MetricsBlock` (`_block.py`): a kernel process writes its snapshot into a
  small shared-memory block every `PUBLISH_INTERVAL` seconds (and once at
  its end); its launcher reads every kernel's block when scraped.
* `render` (`_exposition.py`) writes snapshots as the text exposition format.
* `_server.py`: the server (aiohttp), on the run's own loop for one
  kernel, on a thread of the launcher for kernel processes; `announce`
  logs its URL once it listens (logger `kernel.metrics.url`); `_app.py` its
  routes: `/metrics`, and the dashboard at `/` (`_static/`: the page, its
  script and style) with its JSON (`/api/graph`: `Graph.describe()`,
  `/api/state`, `/api/events`: `_dashboard.py`'s state, live).

This package imports nothing else of the library but the error type of
`kernel.scheduling`: the runtime and execution layers use it, not the other
way round.
"""

from ._block import PUBLISH_INTERVAL, MetricsBlock
from ._exposition import render
from ._server import MetricsServerError, MetricsServerThread, announce, listen, parse_address, serve_on_loop

__all__ = ["PUBLISH_INTERVAL", "MetricsBlock", "MetricsServerError", "MetricsServerThread", "announce",
           "listen", "parse_address", "render", "serve_on_loop"]
