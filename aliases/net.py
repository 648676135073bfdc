"""`import net`: the public name of `kernel.net`, the very same module.

The library itself imports only `kernel.net`, which a user's own `net.py`
or `net/` folder cannot shadow (see README, "Import names")."""

from kernel._aliases import alias

alias(__name__)
