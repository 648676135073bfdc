"""Executing a run: one kernel in this thread, pinned kernel processes on
one machine (`_cores.py`: rings, supervision, the kernel processes), or one
process of a cluster (`_cluster.py`: its configuration).

Imports the runtime, scheduling, dataflow and `kernel.net`; never
`kernel.operators` or `kernel.state`.
"""
