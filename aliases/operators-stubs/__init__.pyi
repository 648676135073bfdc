# What a type checker sees of `import operators`: the names of `kernel.operators`. At run time
# `operators` is `kernel.operators` itself (aliases/operators.py), which no checker can follow, and a
# single-file module cannot carry a py.typed marker: this stub package (PEP 561)
# stands in for it.
from kernel.operators import *  # noqa: F403 (the whole public face, as the alias has)
