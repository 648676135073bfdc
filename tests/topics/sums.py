"""Job B of the topic tests: subscribes to TOPIC and prints, as JSON lines,
every reading it received (`{"seq": [...]}`) and its tumbling sums of
WINDOW event seconds (`{"sums": [[start, sum], ...]}`); its log says where
it started on each partition and each window as it closes.
Run: python sums.py COORDINATOR."""

import json
import os
import sys
import time

from kernel.operators import Tumbling

from kernel import Dataflow, Operator, run


class Slow(Operator):
    def __init__(self, pause):
        self.pause = pause

    def on_batch(self, port, batch):
        if not (FAST and os.path.exists(FAST)):
            time.sleep(self.pause)
            while STALL and os.path.exists(STALL) and not os.path.exists(FAST):
                time.sleep(0.01)  # stalled: this kernel reads nothing more until FAST exists
        self.emit(batch)


TOPIC = os.environ.get("TOPIC", "readings")
FAST = os.environ.get("FAST")  # a file: once it exists, SLOW no longer slows
STALL = os.environ.get("STALL")  # a file: once it exists, SLOW stops B until FAST exists
WINDOW = float(os.environ.get("WINDOW", "0.5"))


def build():
    flow = Dataflow("sums")
    readings = flow.subscribe(TOPIC, timeout=float(os.environ.get("TIMEOUT", "20")),
                              on_lost=os.environ.get("ON_LOST", "fail"),
                              record_type=dict if os.environ.get("TYPED") else None)
    if os.environ.get("SLOW"):  # seconds each batch takes: a slow subscriber
        readings = readings.apply(lambda: Slow(float(os.environ["SLOW"])), name="slow")
    seqs = readings.map(lambda r: r[0]).collect()
    sums = (readings.key_by(lambda r: "all").map_values(lambda r: r[2])
            .window(Tumbling(WINDOW)).sum().map(said).collect())
    return flow, seqs, sums


def gate(path):
    """Kernel 1's subscription looks the topic up only once `path` exists
    (the tests order it against the publisher's end); each kernel says
    when it looks up."""
    import asyncio

    from kernel.topics import _subscribe

    read = _subscribe.Subscribe._read

    async def gated(self):
        if self.context.index == 1:
            while not os.path.exists(path):
                await asyncio.sleep(0.02)
        print(f"kernel {self.context.index} looks up", file=sys.stderr, flush=True)
        await read(self)

    _subscribe.Subscribe._read = gated


def said(result):
    """Each window's result as it comes (its start, on stderr): the tests
    see windows close while the publisher runs, as watermarks move."""
    print(f"window {result[1].start}", file=sys.stderr, flush=True)
    return result


if __name__ == "__main__":
    import logging

    # the subscriber says when it waits for the topic and each epoch it gets (tests wait on them)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s %(message)s")
    logging.getLogger("kernel.topics").setLevel(logging.DEBUG)
    if os.environ.get("GATE"):
        gate(os.environ["GATE"])
    flow, seqs, sums = build()
    print("subscribing", flush=True)
    try:
        run(flow, coordinator=sys.argv[1], cores=int(os.environ.get("CORES", "1")))
    except Exception as exc:
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}",
                          "cause": repr(exc.__cause__)}), flush=True)
        sys.exit(3)
    print(json.dumps({"seq": seqs.items}), flush=True)
    print(json.dumps({"sums": sorted([w.start, s] for _, w, s in sums.items)}), flush=True)
    peak = next(line for line in open("/proc/self/status") if line.startswith("VmHWM"))
    print(json.dumps({"peak": int(peak.split()[1]) * 1024}), flush=True)  # the peak resident bytes
