"""`import state`: the public name of `kernel.state`, the very same module.

The library itself imports only `kernel.state`, which a user's own `state.py`
or `state/` folder cannot shadow (see README, "Import names")."""

from kernel._aliases import alias

alias(__name__)
