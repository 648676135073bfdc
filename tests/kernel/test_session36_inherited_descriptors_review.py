"""Review of what kernel processes let go of among the application's pipes
(kernel/execution/_inherited_descriptors.py): legitimate code that used a
pipe the walk did not see, and so wrote to a stand-in.

Each case runs in a Python process of its own (its classes are those of a
script, `__main__`), with a time limit: a run that hangs fails its test."""

from __future__ import annotations

import pytest
from _scripts import assert_said_exact, run_script

A_SCRIPTS_OPERATOR_WRITES_TO_A_GLOBAL_PIPE = """
    import os, threading
    from kernel import Dataflow, Operator, run

    read, write = os.pipe()
    out = os.fdopen(write, "wb")
    told = []
    reader = threading.Thread(target=lambda: told.append(os.fdopen(read, "rb").read()))
    reader.start()

    class Tell(Operator):
        def on_batch(self, port, batch):
            out.write(b"".join(b"%d\\n" % x for x in batch))
            out.flush()

    flow = Dataflow("tell")
    flow.from_iterable(range(500)).apply(Tell)
    try:
        run(flow, cores={cores})
    finally:
        out.close()
        reader.join()
    print("exact" if sorted(map(int, told[0].split())) == list(range(500)) else f"wrong: {{told}}")
"""


@pytest.mark.parametrize("cores", [2, 3])
def test_a_scripts_operator_keeps_the_pipe_its_method_writes_to(tmp_path, cores):
    """The methods of the classes a step reaches are walked, but not those
    of a module whose name starts with `_`, meant for Python's own
    (`_io`...): a script's, `__main__`, and a pipeline file's under
    `python -m kernel.run`, `__kernel_pipeline__`, were skipped, and the
    step failed with a bare BrokenPipeError."""
    assert_said_exact(run_script(tmp_path, A_SCRIPTS_OPERATOR_WRITES_TO_A_GLOBAL_PIPE.format(cores=cores)))


A_CLASS_ATTRIBUTE_HOLDS_A_PIPE = """
    import os, threading
    from kernel import Dataflow, run

    read, write = os.pipe()
    told = []
    reader = threading.Thread(target=lambda: told.append(os.fdopen(read, "rb").read()))
    reader.start()

    class Publish:
        out = os.fdopen(write, "wb")  # a pipe the method writes to

        def __call__(self, x):
            type(self).out.write(b"%d\\n" % x)
            type(self).out.flush()
            return x

    flow = Dataflow("publish")
    flow.from_iterable(range(200)).map(Publish()).collect()
    try:
        run(flow, cores={cores})
    finally:
        Publish.out.close()
        reader.join()
    print("exact" if sorted(map(int, told[0].split())) == list(range(200)) else f"wrong: {{told}}")
"""


@pytest.mark.parametrize("cores", [2, 3])
def test_a_pipe_a_class_attribute_holds_is_kept(tmp_path, cores):
    """The walk looked into the methods of the classes a step reaches, not
    into their other attributes: a pipe held by a class attribute, which a
    method wrote to, failed the step with a bare BrokenPipeError."""
    assert_said_exact(run_script(tmp_path, A_CLASS_ATTRIBUTE_HOLDS_A_PIPE.format(cores=cores)))


A_MODULES_PIPE = """
    import os, sys, types
    from kernel import Dataflow, run

    read, write = os.pipe()
    helpers = types.ModuleType("helpers")  # a module of the application's, holding a pipe
    helpers.out = os.fdopen(write, "wb", buffering=0)
    sys.modules["helpers"] = helpers

    flow = Dataflow("module")
    flow.from_iterable(range(10)).map(lambda x: helpers.out.write(b"%d\\\\n" % x)).collect()
    try:
        run(flow, cores=2)
    except Exception as exc:
        print(str(exc).replace("\\\\n", " "))
    print("write end", write)
"""


def test_a_pipe_a_step_reaches_only_through_a_module_fails_saying_it_was_let_go(tmp_path):
    """A pipe a step uses through a module's attribute, which the walk does
    not look into, is let go of: the step's error said only `BrokenPipeError:
    [Errno 32] Broken pipe`. It now says what the kernel let go of, why,
    and how to keep it."""
    done = run_script(tmp_path, A_MODULES_PIPE)
    out = done.stdout.decode()
    assert done.returncode == 0, done.stderr.decode()
    write_end = out.split("write end ")[-1].split()[0]
    assert "BrokenPipeError" in out, out
    assert "this kernel process let go of those that no step was seen to reach" in out, out
    assert f"a pipe's write end (descriptor {write_end})" in out, out
    assert "a module's attribute" in out, out


def test_a_class_of_many_attributes_costs_a_bounded_walk(monkeypatch):
    """A class a step reaches is looked into for what its attributes hold,
    a bounded number of them: an Enum of 20,000 members cost ~0.3 s at
    each kernel's start, one walk a member."""
    from kernel.execution import _inherited_descriptors

    walks = []
    real = _inherited_descriptors.reachable

    def counted(root, kinds):
        walks.append(root)
        return real(root, kinds)

    monkeypatch.setattr(_inherited_descriptors, "reachable", counted)
    Many = type("Many", (), {f"a{i}": [i] for i in range(5_000)})
    Many.__module__ = "application"
    _inherited_descriptors._reached([lambda: Many])
    assert len(walks) <= 1 + 64, len(walks)  # (the factory, and at most 64 attributes)


PUTS_TO_A_MULTIPROCESSING_QUEUE = """
    import multiprocessing, sys, threading
    from kernel import Dataflow, run

    N = 20_000
    records = multiprocessing.Queue()
    got = []

    def drain():  # as a logging QueueListener does, while the run goes
        while (record := records.get()) is not None:
            got.append(record)

    drainer = threading.Thread(target=drain)
    drainer.start()

    def put(x):
        records.put(x)
        return x

    flow = Dataflow("puts")
    flow.from_iterable(range(N)).map(put).collect()
    try:
        run(flow, cores={cores})
    finally:
        records.put(None)
        drainer.join()
    print("exact" if sorted(got) == list(range(N)) else f"wrong: {{len(got)}}")
"""


@pytest.mark.parametrize("cores", [2, 3])
def test_what_steps_put_to_a_multiprocessing_queue_all_arrives(tmp_path, cores):
    """A kernel left by os._exit with the records a step had put still in
    the queue's feeder thread (a daemon): they were lost, and the kernel,
    killed while that thread held the queue's write lock (shared by every
    process), left the caller's own `put` of its end marker waiting for
    ever. The kernel now lets the feeder write what it holds first."""
    assert_said_exact(run_script(tmp_path, PUTS_TO_A_MULTIPROCESSING_QUEUE.format(cores=cores)))
