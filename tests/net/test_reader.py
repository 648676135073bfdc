"""The ring reader (net/_transport.py) tells a parked producer of freed space
while it keeps reading other rings, also when the producer's flag came after
the pop that emptied its ring. The flag can come late: `SpscRing.
_push_general` loads the head, then stores the flag, with no fence and no
second look at the head, so a consumer that freed the space between the two
checked the flag too early; it must look again at its next activation that
read anything, not only when it parks (found in review of the reader's
empty-ring skip, which first checked only the rings it had just read)."""
import os

from kernel.net._codec import encode_batch
from kernel.net._transport import ProcessTransport, _Reader
from kernel.net.shm import _SLOT_PRODUCER_WAITING, Doorbell, SpscRing


def _bell_was_rung(bell) -> bool:
    try:
        os.eventfd_read(bell.fd)
        return True
    except BlockingIOError:
        return False


def test_a_parked_producer_hears_of_space_while_the_consumer_reads_other_rings():
    bells = [Doorbell() for _ in range(3)]
    a_prod = SpscRing.create(1 << 12)           # kernel 0 -> kernel 2
    b_prod = SpscRing.create(1 << 12)           # kernel 1 -> kernel 2
    a_cons, b_cons = SpscRing.attach(a_prod.name), SpscRing.attach(b_prod.name)
    try:
        transport = ProcessTransport(2, 3, {}, {0: a_cons, 1: b_cons}, bells)
        reader = _Reader(transport, lambda act: None, None, lambda c, s, p: None, 99, lambda: None)
        kind, body = encode_batch([1, 2, 3])
        while a_prod.push_tagged(kind, 0, body):  # kernel 0 fills its ring
            pass
        # kernel 2 drains it (kernel 0 is preempted between its head load and its flag store)
        a_prod._slots[_SLOT_PRODUCER_WAITING] = 0
        while not a_cons.is_empty():
            reader.activate()
        # ... kernel 0 resumes: stores the flag from its stale head, and parks
        a_prod._slots[_SLOT_PRODUCER_WAITING] = 1
        bells[0].park()
        # kernel 1 keeps kernel 2 busy: kernel 2 reads on and never parks
        for _ in range(50):
            assert b_prod.push_tagged(kind, 0, body)
            reader.activate()
        assert _bell_was_rung(bells[0]), "kernel 0 still parked with room in its ring"
    finally:
        for r in (a_cons, b_cons, a_prod, b_prod):
            r.close()
        a_prod.unlink(), b_prod.unlink()
        for b in bells:
            b.close()
