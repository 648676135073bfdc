"""Kernels' metrics snapshots (`Runtime.metrics_snapshot`) as Prometheus's
text exposition format (version 0.0.4), written here rather than through
`prometheus_client`: its registry is per process and its multi-process mode
goes through files, while ours are snapshots read from the kernels' blocks
at scrape time; tests/metrics checks the output with prometheus_client's
parser and with a real Prometheus."""

from __future__ import annotations

import math

from ._block import without_surrogates

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# name, type, help; the order in which families are written
_FAMILIES = (
    ("streamkernel_records_in_total", "counter",
     "Records handed to a step's operator (counted per batch); sources have none."),
    ("streamkernel_records_out_total", "counter", "Records a step emitted (counted per batch)."),
    ("streamkernel_watermark_seconds", "gauge",
     "A step's event-time frontier (seconds since the epoch; +Inf once its input ended)."),
    ("streamkernel_late_events_total", "counter", "Events a window step found behind its watermark."),
    ("streamkernel_busy_seconds_total", "counter",
     "Seconds a kernel spent running operators, per task class."),
    ("streamkernel_idle_seconds_total", "counter",
     "Seconds in which a kernel had no operator ready to run (waiting for input)."),
    ("streamkernel_stalls_total", "counter",
     "Activations that ran longer than the stall threshold without yielding."),
    ("streamkernel_epoch_seconds", "histogram",
     "Seconds from an epoch's start on a kernel to its whole snapshot (aligned and pickled)."),
    ("streamkernel_snapshot_bytes", "gauge", "Size of the last snapshot a kernel took."),
    ("streamkernel_backpressured_seconds_total", "counter",
     "Seconds a kernel's sources waited on a full ring, an asynchronous sink's full buffer or a loop's "
     "full entry (not the kernel's own pacing)."),
    ("streamkernel_ring_used_bytes", "gauge",
     "Bytes a kernel has written into its ring to another kernel (peer) or the link relay, not yet read."),
    ("streamkernel_link_sent_bytes_total", "counter",
     "Bytes of frames a cluster process sent on its link to another process (peer)."),
)


def render(snapshots: list[dict]) -> str:
    """Every kernel's snapshot as one exposition (families with no sample are left out)."""
    samples: dict[str, list[str]] = {name: [] for name, _, _ in _FAMILIES}
    for snapshot in sorted(snapshots, key=lambda s: s["kernel"]):
        _kernel_samples(snapshot, samples)
    lines = []
    for name, kind, text in _FAMILIES:
        if samples[name]:
            lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", *samples[name]]
    return "\n".join(lines) + "\n"


def _kernel_samples(snapshot: dict, samples: dict[str, list[str]]) -> None:
    kernel = str(snapshot["kernel"])

    def add(name: str, labels: str, value) -> None:
        samples[f"streamkernel_{name}"].append(f"streamkernel_{name}{labels} {_number(value)}")

    for step, records_in, records_out, watermark, late, *_ in snapshot["steps"]:
        labels = _labels(step=step, kernel=kernel)
        if records_in is not None:
            add("records_in_total", labels, records_in)
        if records_out is not None:
            add("records_out_total", labels, records_out)
        if watermark is not None:
            add("watermark_seconds", labels, watermark)
        if late is not None:
            add("late_events_total", labels, late)
    for task_class, seconds in sorted(snapshot["busy"].items()):
        add("busy_seconds_total", _labels(kernel=kernel, task_class=task_class), seconds)
    add("idle_seconds_total", _labels(kernel=kernel), snapshot["idle"])
    add("stalls_total", _labels(kernel=kernel), snapshot["stalls"])
    if "epochs" in snapshot:  # a run with a state_dir, once it has taken a snapshot
        bounds, counts, seconds = snapshot["epochs"]
        total = 0
        for bound, count in zip([*bounds, math.inf], counts):
            total += count  # cumulative, as the format's buckets are
            labels = _labels(kernel=kernel, le=_number(float(bound)))
            samples["streamkernel_epoch_seconds"].append(f"streamkernel_epoch_seconds_bucket{labels} {total}")
        samples["streamkernel_epoch_seconds"].append(
            f"streamkernel_epoch_seconds_sum{_labels(kernel=kernel)} {_number(seconds)}")
        samples["streamkernel_epoch_seconds"].append(
            f"streamkernel_epoch_seconds_count{_labels(kernel=kernel)} {total}")
        add("snapshot_bytes", _labels(kernel=kernel), snapshot["snapshot_bytes"])
    if "backpressured" in snapshot:  # only kernels with peers can be backpressured
        add("backpressured_seconds_total", _labels(kernel=kernel), snapshot["backpressured"])
    for peer, used in sorted(snapshot.get("ring_used_bytes", {}).items()):  # kernel processes only
        add("ring_used_bytes", _labels(kernel=kernel, peer=peer), used)
    if "links" in snapshot:  # a cluster's process: its relay's links (on its first kernel's snapshot)
        process = str(snapshot["links"]["process"])
        for peer, sent in sorted(snapshot["links"]["sent"].items()):
            add("link_sent_bytes_total", _labels(process=process, peer=peer), sent)


def _labels(**labels: str) -> str:
    # `task_class` is written `class` (a Python keyword as an argument name)
    inner = ",".join(f'{"class" if key == "task_class" else key}="{_escape(value)}"'
                     for key, value in labels.items())
    return "{" + inner + "}"


def _escape(value: str) -> str:
    if not value.isascii():  # a lone surrogate does not encode: every scrape failed (500)
        value = without_surrogates(value)
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))
