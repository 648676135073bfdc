"""The microkernel: one cooperative kernel per core.

Holds `Kernel` (tasks, activations, `cooperate()`, processing-time timers,
the context its work shares), the `Scheduler` (bounded ticks in budgeted
slices, task classes with shares, the stall detector) and the clocks.

Imports nothing else of the library: it knows no dataflow, no operator, no
transport and no state.
"""
