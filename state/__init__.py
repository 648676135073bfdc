"""Keyed state and snapshots.

* Keyed state for mid-level operators (`value_state`, `map_state`,
  `list_state`): dicts keyed by record key, registered on their operator so
  that epoch snapshots take them and a resumed run puts them back.
* The durable snapshot store (`SnapshotStore`, SQLite under `state_dir`):
  epochs written by each kernel, marked complete when every kernel has made
  them durable, verified by checksum when read.
"""

from ._keyed import ListState, MapState, ValueState, list_state, map_state, value_state
from ._store import FINAL, CorruptSnapshot, SnapshotStore, StateError

__all__ = [
    "FINAL",
    "CorruptSnapshot",
    "ListState",
    "MapState",
    "SnapshotStore",
    "StateError",
    "ValueState",
    "list_state",
    "map_state",
    "value_state",
]
