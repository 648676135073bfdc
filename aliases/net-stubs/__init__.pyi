# What a type checker sees of `import net`: the names of `kernel.net`. At run time
# `net` is `kernel.net` itself (aliases/net.py), which no checker can follow, and a
# single-file module cannot carry a py.typed marker: this stub package (PEP 561)
# stands in for it.
from kernel.net import *  # noqa: F403 (the whole public face, as the alias has)
