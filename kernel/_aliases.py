"""`net`, `state` and `operators` are `kernel.net`, `kernel.state` and
`kernel.operators` themselves, the same module objects (README, "Import
names"), and so are their submodules: `from operators.windows import
Tumbling` is `kernel.operators.windows.Tumbling`. Without the finder below,
Python loads `operators.windows` a second time under that name, with classes
of its own, and a window built from it was refused ("a window must be
Tumbling, Sliding or Session, got Tumbling(1.0)")."""

from __future__ import annotations

import importlib
import importlib.util
import sys

PUBLIC = ("net", "state", "operators")


class _Submodules:
    """Finds `net.X`, `state.X`, `operators.X` as the loaded `kernel.*.X`,
    while the top name is the alias (a user's own `operators.py` in its
    place keeps its own submodules, if any). A finder and a loader by its
    methods (find_spec; create_module, exec_module): importlib.abc's base
    classes would bring importlib.resources and tempfile (~10 ms) to every
    `import net`, `state`, `operators`."""

    def find_spec(self, fullname, path=None, target=None):
        top, dot, _ = fullname.partition(".")
        aliased = sys.modules.get(top) is sys.modules.get(f"kernel.{top}") is not None
        if not (dot and top in PUBLIC and aliased):
            return None
        if importlib.util.find_spec(f"kernel.{fullname}") is None:
            return None  # no such submodule: found by nobody, as without this finder
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        return importlib.import_module(f"kernel.{spec.name}")

    def exec_module(self, module) -> None:
        pass  # it ran as kernel.*: nothing to run again


def alias(name: str) -> None:
    """Make `name` (one of PUBLIC) the module `kernel.<name>`, submodules included."""
    sys.modules[name] = importlib.import_module(f"kernel.{name}")
    if not any(isinstance(finder, _Submodules) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Submodules())
