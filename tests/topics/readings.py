"""Job A of the topic tests: timestamped readings `(seq, ts, value)`,
`RATE` batches of `BATCH` a second, published as topic TOPIC (every
setting from the environment), until `COUNT` records (0: for ever).
Run: python readings.py COORDINATOR. Its log (stderr, DEBUG for
kernel.topics) says where each epoch ends."""

import logging
import os
import sys

from kernel import Dataflow, Source, TimedBatch, run

TOPIC = os.environ.get("TOPIC", "readings")
BATCH = int(os.environ.get("BATCH", "10"))
RATE = float(os.environ.get("RATE", "100"))  # batches a second
COUNT = int(os.environ.get("COUNT", "0"))
DT = 1 / 64  # event seconds between readings (exact in binary: window bounds are too)
PAYLOAD = int(os.environ.get("PAYLOAD", "0"))  # a string of this many bytes in each reading
GO = os.environ.get("GO")  # a file: once it exists, the readings come at full speed


def value(seq: int) -> int:
    return (seq * 7919) % 101


class Readings(Source):
    def open(self, context):
        self.seq = 0
        self.due = context.clock.monotonic()

    def poll(self):
        now = self.context.clock.monotonic()
        if RATE and now < self.due and not (GO and os.path.exists(GO)):
            self.context.kernel.call_later(self.due - now, self.wake)
            return None
        self.due += 1 / RATE if RATE else 0
        seqs = range(self.seq, self.seq + BATCH if not COUNT else min(self.seq + BATCH, COUNT))
        self.seq += len(seqs)
        pad = "x" * PAYLOAD
        records = [(s, s * DT, value(s), pad) if PAYLOAD else (s, s * DT, value(s)) for s in seqs]
        self.emit(TimedBatch(records, [s * DT for s in seqs]))
        self.advance_watermark(self.seq * DT - DT)
        return not (COUNT and self.seq >= COUNT)


def build():
    flow = Dataflow("readings")
    stream = flow.source(Readings, name="readings")
    stream.publish(TOPIC, epoch_interval=float(os.environ.get("EPOCH", "0.2")),
                   retain=int(os.environ["RETAIN"]) if os.environ.get("RETAIN") else None,
                   slow=os.environ.get("SLOW_MODE", "backpressure"),
                   partitions=os.environ.get("PARTITIONS", "per-kernel"),
                   record_type=tuple if os.environ.get("TYPED") else None)
    return flow


flow = build()  # (for `python -m kernel submit readings.py`: the coordinator from its executor)

if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s %(message)s")
    logging.getLogger("kernel.topics").setLevel(logging.DEBUG)
    print("started", flush=True)
    run(flow, coordinator=sys.argv[1], cores=int(os.environ.get("CORES", "1")))
    peak = next(line for line in open("/proc/self/status") if line.startswith("VmHWM"))
    print("ended", int(peak.split()[1]) * 1024, flush=True)  # the peak resident bytes
