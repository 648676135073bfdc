"""A flow's graph instantiated on one kernel, running.

Holds the operator instances and their activations, in-band progress
(watermarks, idleness, end of input), epoch alignment and snapshots, the
exchange between kernels, and the coordinators that make epochs durable.

Imports `kernel.scheduling`, `kernel.dataflow` and `kernel.net` (through
its transport protocol); never `kernel.operators` or `kernel.state` (a
snapshot store reaches it duck-typed, through the run plan).
"""
