"""Executing a run (`_plan.py`: the one `RunPlan`; `_execute.py`: carrying
it out): one kernel in this thread, or pinned kernel processes on one
machine (`_cores.py`: the rings between them and forking them;
`_supervisor.py`: waiting for them, failures; `_child.py`: what each runs;
`_signals.py`: Ctrl-C held back while one is forked),
or one process of a cluster (`_cluster.py`: its configuration).

Imports the runtime, scheduling, dataflow and `kernel.net`; never
`kernel.operators` or `kernel.state`.
"""
