"""`import operators`: the public name of `kernel.operators`, the very same module.

The library itself imports only `kernel.operators`, which a user's own `operators.py`
or `operators/` folder cannot shadow (see README, "Import names")."""

import sys

import kernel.operators

sys.modules[__name__] = kernel.operators
