"""Keyed state and snapshots.

* Keyed state for mid-level operators (`value_state`, `map_state`,
  `list_state`): dicts keyed by record key, registered on their operator so
  that epoch snapshots take them and a resumed run puts them back.
* The durable snapshot store (`SnapshotStore`, SQLite under `state_dir`):
  epochs written by each kernel, marked complete when every kernel has made
  them durable, verified by checksum when read.
"""

if __name__ != "kernel.state":
    # `import state` with this folder on sys.path (running from a checkout)
    # would load the package a second time, with classes of its own: be
    # `kernel.state` itself instead (as the installed aliases/state.py is).
    # The imports below then only fill the module thrown away.
    from kernel._aliases import alias

    alias(__name__)


from kernel.state._keyed import ListState, MapState, ValueState, list_state, map_state, value_state
from kernel.state._store import FINAL, CorruptSnapshot, SnapshotStore, StateError

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
