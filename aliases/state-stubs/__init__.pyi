# What a type checker sees of `import state`: the names of `kernel.state`. At run time
# `state` is `kernel.state` itself (aliases/state.py), which no checker can follow, and a
# single-file module cannot carry a py.typed marker: this stub package (PEP 561)
# stands in for it.
from kernel.state import *  # noqa: F403 (the whole public face, as the alias has)
