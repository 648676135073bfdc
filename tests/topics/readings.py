"""Job A of the topic tests: timestamped readings `(seq, ts, value)`,
`RATE` batches of `BATCH` a second, published as topic TOPIC (every
setting from the environment), until `COUNT` records (0: for ever).
Run: python readings.py COORDINATOR. Its log (stderr, DEBUG for
kernel.topics) says where each epoch of each partition ends."""

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
HOLD = os.environ.get("HOLD")  # a file: after COUNT readings the source waits for it, then ends
WAIT = os.environ.get("WAIT")  # a file: the source makes no reading until it exists (its RATE from then)
# the kernels WAIT applies to, e.g. "1" (default: every one)
WAIT_KERNELS = set(map(int, os.environ["WAIT_KERNELS"].split(","))) if os.environ.get("WAIT_KERNELS") \
    else None
START = int(os.environ.get("START", "0"))  # the first reading's seq (a restart's resuming point)
# SPLIT: kernel k of n makes seqs START + k, START + k + n, ... (else each
# kernel makes every seq); COUNT counts the seqs of every kernel together
SPLIT = bool(os.environ.get("SPLIT"))
RESUMABLE = bool(os.environ.get("RESUMABLE"))
# RESTARTED=N: a job submitted to the system, whose attempts the job master
# starts (the executor names the attempt in KERNEL_RUN, "JOB.ATTEMPT"):
# attempt 1 runs for ever, attempt a >= 2 makes COUNT readings from seq
# (a - 1) * N (as if it resumed there: event times past attempt 1's)
if os.environ.get("RESTARTED"):
    ATTEMPT = int(os.environ["KERNEL_RUN"].rpartition(".")[2])
    START = (ATTEMPT - 1) * int(os.environ["RESTARTED"])
    COUNT = COUNT if ATTEMPT > 1 else 0
if os.environ.get("LOG_TOPICS"):  # (a submitted job: its log says where its epochs end)
    _handler = logging.StreamHandler(sys.stderr)
    _handler.setFormatter(logging.Formatter("%(name)s %(message)s"))
    logging.getLogger("kernel.topics").addHandler(_handler)
    logging.getLogger("kernel.topics").setLevel(logging.DEBUG)


def value(seq: int) -> int:
    return (seq * 7919) % 101


class Readings(Source):
    def open(self, context):
        self.first, self.step = (context.index, context.peers) if SPLIT else (0, 1)
        self.seq = START + self.first  # the next one
        self.end = START + COUNT if COUNT else float("inf")
        self.due = context.clock.monotonic()
        self.held = False
        self.waits = WAIT_KERNELS is None or context.index in WAIT_KERNELS

    def poll(self):
        if self.seq >= self.end:
            return self.hold()
        if WAIT and self.waits and not os.path.exists(WAIT):
            self.context.kernel.call_later(0.02, self.wake)
            self.due = self.context.clock.monotonic()  # its pace starts once WAIT exists (no burst)
            return None
        now = self.context.clock.monotonic()
        if RATE and now < self.due and not (GO and os.path.exists(GO)):
            self.context.kernel.call_later(self.due - now, self.wake)
            return None
        self.due += 1 / RATE if RATE else 0
        seqs = range(self.seq, min(self.seq + BATCH * self.step, self.end), self.step)
        self.seq += len(seqs) * self.step
        pad = "x" * PAYLOAD
        records = [(s, s * DT, value(s), pad) if PAYLOAD else (s, s * DT, value(s)) for s in seqs]
        self.emit(TimedBatch(records, [s * DT for s in seqs]))
        self.advance_watermark(seqs[-1] * DT)
        return True if self.seq < self.end or HOLD else False

    def on_epoch(self, epoch):
        # RESUMABLE: its position is in the job's snapshots (a job with a
        # state_dir resumes from it, as a real source would)
        return self.seq if RESUMABLE else None

    def restore(self, snapshot):
        if snapshot is not None:
            self.seq = snapshot

    def hold(self):
        if not HOLD or os.path.exists(HOLD):
            return False
        if not self.held:
            self.held = True
            print(f"holding {self.context.index}", file=sys.stderr, flush=True)
        self.context.kernel.call_later(0.02, self.wake)
        return None


def build():
    flow = Dataflow("readings")
    stream = flow.source(Readings, name="readings")
    stream.publish(TOPIC, epoch_interval=float(os.environ.get("EPOCH", "0.2")),
                   retain=int(os.environ["RETAIN"]) if os.environ.get("RETAIN") else None,
                   retain_bytes=int(os.environ["RETAIN_BYTES"]) if os.environ.get("RETAIN_BYTES") else None,
                   slow=os.environ.get("SLOW_MODE", "backpressure"),
                   partitions=os.environ.get("PARTITIONS", "per-kernel"),
                   record_type=tuple if os.environ.get("TYPED") else None)
    return flow


flow = build()  # (for `python -m kernel submit readings.py`: the coordinator from its executor)

if os.environ.get("CLOSE_SUBSCRIBERS"):  # a broken publisher: it closes every connection after the handshake
    from kernel.topics import _publish

    async def _close_at_once(self, ws, peer, meta, address):
        print("closing a subscriber", file=sys.stderr, flush=True)
        await ws.close()

    _publish.Publish._serve_subscriber = _close_at_once

if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s %(message)s")
    logging.getLogger("kernel.topics").setLevel(logging.DEBUG)
    print("started", flush=True)
    # STATE_DIR: snapshots every JOB_EPOCH seconds (the topic's epochs are then the job's)
    snapshots = {}
    if os.environ.get("STATE_DIR"):
        snapshots = {"state_dir": os.environ["STATE_DIR"],
                     "epoch_interval": float(os.environ.get("JOB_EPOCH", "0.2"))}
    run(flow, coordinator=sys.argv[1], cores=int(os.environ.get("CORES", "1")), **snapshots)
    peak = next(line for line in open("/proc/self/status") if line.startswith("VmHWM"))
    print("ended", int(peak.split()[1]) * 1024, flush=True)  # the peak resident bytes
