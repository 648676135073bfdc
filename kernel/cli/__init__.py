"""The command line: `python -m kernel.run pipeline.py[:name]` (`_run.py`),
with a cluster's place taken from Slurm or a Kubernetes StatefulSet
(`--slurm`, `--peers-from-env`: `_resource_managers.py`). The system's
commands (`python -m kernel coordinator|executor|submit...`) live in
`kernel.system`.

Imports the public face of `kernel` (`run`, the run plan); nothing below
it reaches back here.
"""
