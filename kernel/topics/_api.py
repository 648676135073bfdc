"""What the fluent API's `publish`, `subscribe` and `serve` build: their
arguments checked when the flow is built, and the operator factories."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any


def _coordinator_of(flow: Any) -> Callable[[], str | None]:
    return lambda: getattr(flow, "_topics_coordinator", None)


def _check_name(name: object, what: str) -> None:
    if not isinstance(name, str) or not name or len(name) > 200:
        raise ValueError(f"{what} needs a name (a non-empty string), got {name!r}")
    try:
        name.encode()
    except UnicodeEncodeError:  # (a lone surrogate: it failed at run time, deep in a task, unnamed)
        raise ValueError(f"{what}: the name {name!r} is not valid Unicode text (it cannot be sent to "
                         "the coordinator)") from None


def _unclaimed(flow: Any, name: str, what: str) -> None:
    """One stream or service a name in a flow: its kernels publish under one
    publisher id, so a second `publish` (or a `serve`) of one name took the
    first's place in the catalog, its records lost without a word. Checked
    before the step is added, `claim`ed once it is (a publish refused for
    its stream kept the name from the right one)."""
    claimed = flow.__dict__.get("_topic_names", {})
    if name in claimed:
        raise ValueError(f"{what}: {name!r} is already {claimed[name]} by this flow (a name is published "
                         "or served once in a flow: publish the union of the streams, "
                         f"a.union(b).publish({name!r}))")


def claim(flow: Any, name: str, what: str) -> None:
    """The name `publish` or `serve` added a step for (`_unclaimed`)."""
    flow.__dict__.setdefault("_topic_names", {})[name] = "published" if what == "publish" else "served"


def _seconds(value: object) -> bool:
    """A number of seconds: True is not one (it was taken for 1 second)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def publisher(stream: Any, name: str, partitions: str, retain: int | None, slow: str, epoch_interval: float,
              record_type: type | None, retain_bytes: int | None = None) -> tuple[Any, Callable[[], Any]]:
    from kernel.topics._publish import Publish

    _check_name(name, "publish")
    if partitions not in ("per-kernel", "merged"):
        raise ValueError(f"publish: partitions must be 'per-kernel' or 'merged', got {partitions!r}")
    if retain is not None and (not isinstance(retain, int) or isinstance(retain, bool) or retain < 1):
        raise ValueError(f"publish: retain must be a number of epochs >= 1 or None, got {retain!r}")
    if retain_bytes is not None:
        if not isinstance(retain_bytes, int) or isinstance(retain_bytes, bool) or retain_bytes < 1:
            raise ValueError(f"publish: retain_bytes must be a number of bytes >= 1 or None, "
                             f"got {retain_bytes!r}")
    if slow not in ("backpressure", "disconnect"):
        raise ValueError(f"publish: slow must be 'backpressure' or 'disconnect', got {slow!r}")
    if not _seconds(epoch_interval) or not 0 < epoch_interval < float("inf"):
        raise ValueError("publish: epoch_interval must be a positive number of seconds, "
                         f"got {epoch_interval!r}")
    if record_type is not None and not isinstance(record_type, type):
        raise TypeError(f"publish: record_type must be a class, got {record_type!r}")
    _unclaimed(stream.flow, name, "publish")
    merged = partitions == "merged"
    if merged:  # every record to kernel 0 (stable_hash(0) == 0), which serves the one partition
        stream = stream.key_by(_to_kernel_0, name=f"publish({name}) to kernel 0")
    factory = functools.partial(Publish, name, merged=merged, retain=retain, retain_bytes=retain_bytes,
                                slow=slow, epoch_interval=float(epoch_interval), record_type=record_type,
                                coordinator=_coordinator_of(stream.flow))
    return stream, factory


def _to_kernel_0(record: object) -> int:
    return 0


def subscriber(flow: Any, name: str, timeout: float | None, on_lost: str,
               record_type: type | None) -> Callable[[], Any]:
    from kernel.topics._subscribe import Subscribe

    _check_name(name, "subscribe")
    if timeout is not None and (not _seconds(timeout) or not timeout >= 0):
        raise ValueError(f"subscribe: timeout must be a number of seconds >= 0 or None, got {timeout!r}")
    if on_lost not in ("fail", "wait"):
        raise ValueError(f"subscribe: on_lost must be 'fail' or 'wait', got {on_lost!r}")
    if record_type is not None and not isinstance(record_type, type):
        raise TypeError(f"subscribe: record_type must be a class, got {record_type!r}")
    return functools.partial(Subscribe, name, timeout=timeout, on_lost=on_lost, record_type=record_type,
                             coordinator=_coordinator_of(flow))


def server(flow: Any, name: str, handler: Callable[[Any], Any]) -> Callable[[], Any]:
    from kernel.topics._services import Serve

    _check_name(name, "serve")
    if not callable(handler):
        raise TypeError(f"serve({name!r}, handler): the handler must be callable, got {handler!r}")
    _unclaimed(flow, name, "serve")
    return functools.partial(Serve, name, handler, coordinator=_coordinator_of(flow))
