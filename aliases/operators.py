"""`import operators`: the public name of `kernel.operators`, the very same module.

The library itself imports only `kernel.operators`, which a user's own `operators.py`
or `operators/` folder cannot shadow (see README, "Import names")."""

from kernel._aliases import alias

alias(__name__)
