"""What the dashboard page shows, as JSON: the kernels' metrics snapshots
(`Runtime.metrics_snapshot`) summed per step of the graph and listed per
kernel. The page (`_static/`) draws the graph from `Graph.describe()` and
turns two successive states into rates; this module does only sums, so it
is tested against plain arithmetic without a browser.

JSON has no infinity: a watermark that has reached the end of the input
(+inf) is written as the string "end".
"""

from __future__ import annotations

import math

EPOCH_TIMELINE = 64  # epochs the timeline keeps (the newest)


def dashboard_state(snapshots: list[dict], now: float) -> dict:
    """Every kernel's snapshot as one state: `time` (wall seconds),
    `steps` (per graph step: records in and out summed over kernels, the
    lowest watermark, late events, seconds in its on_batch), `kernels` (busy, idle, backpressured
    seconds, stalls, ring and link bytes), `epochs` (the last complete
    epoch on every kernel, and a timeline of snapshot durations)."""
    steps: dict[int, dict] = {}
    kernels = []
    timeline: dict[int, list] = {}
    complete: list[int | None] = []
    for snapshot in sorted(snapshots, key=lambda s: s["kernel"]):
        for _name, records_in, records_out, watermark, late, node, partial, busy in snapshot["steps"]:
            step = steps.setdefault(node, {"id": node, "in": None, "out": None, "watermark": None,
                                           "late": None, "partial_in": None, "busy": None})
            step["busy"] = _add(step["busy"], busy)  # a partial half's time is its step's work too
            step["late"] = _add(step["late"], late)  # (a combiner's partial half finds them too)
            if partial:  # the records the aggregate was given, before they were combined
                step["partial_in"] = _add(step["partial_in"], records_in)
                continue
            step["in"] = _add(step["in"], records_in)
            step["out"] = _add(step["out"], records_out)
            if watermark is not None:
                lowest = step["watermark"]
                step["watermark"] = watermark if lowest is None else min(lowest, watermark)
        kernels.append(_kernel_state(snapshot))
        complete.append(snapshot.get("complete"))
        for epoch, at, seconds in snapshot.get("epoch_log", ()):
            entry = timeline.setdefault(epoch, [epoch, at, seconds])
            entry[1], entry[2] = max(entry[1], at), max(entry[2], seconds)  # as slow as its slowest kernel
    for step in steps.values():
        if step["watermark"] == math.inf:
            step["watermark"] = "end"
    known = [c for c in complete if c is not None]
    return {
        "time": now,
        "steps": [steps[node] for node in sorted(steps)],
        "kernels": kernels,
        "epochs": {
            # an epoch is complete once every kernel has committed it
            "complete": min(known) if known and len(known) == len(complete) else None,
            "timeline": [timeline[e] for e in sorted(timeline)[-EPOCH_TIMELINE:]],
        },
    }


def _kernel_state(snapshot: dict) -> dict:
    return {
        "kernel": snapshot["kernel"],
        "busy": sum(snapshot["busy"].values()),
        "idle": snapshot["idle"],
        "backpressured": snapshot.get("backpressured"),
        "stalls": snapshot["stalls"],
        "snapshot_bytes": snapshot.get("snapshot_bytes"),
        "ring_used_bytes": sum(snapshot.get("ring_used_bytes", {}).values()) if "ring_used_bytes" in snapshot
        else None,
        # a cluster process's links, shown on its first kernel
        "link_sent_bytes": sum(snapshot["links"]["sent"].values()) if "links" in snapshot else None,
    }


def _add(total, value):
    """Sum over kernels, where None means the step has no such count."""
    if value is None:
        return total
    return value if total is None else total + value


#: how long the error's line on the page may be (a record in an OperatorError's
#: first line may be long)
_OUTCOME_CHARS = 300


def run_outcome(error: BaseException | None) -> dict:
    """What the dashboard's last state says of how the run ended: nothing
    when it finished, `{"failed": line}` when it raised an Exception,
    `{"stopped": line}` when it was interrupted (Ctrl-C, a signal, a
    cancelled run_async); `line` the error's first line. The page said
    "ended" either way."""
    if error is None:
        return {}
    text = f"{type(error).__name__}: {error}".strip().splitlines()[0]
    if len(text) > _OUTCOME_CHARS:
        text = text[: _OUTCOME_CHARS - 3] + "..."
    return {"failed" if isinstance(error, Exception) else "stopped": text}
