"""NEXMark's event generator, after the Beam/Flink one (nexmark/nexmark,
`NexmarkGenerator`, `PersonGenerator`, `AuctionGenerator`, `BidGenerator`),
written for Python: seeded, deterministic per event number, and cheap enough
to run inside every kernel.

What follows the reference generator (its defaults):

* Event `n` is a person, an auction or a bid by `n % 50`: 1 person, then 3
  auctions, then 46 bids in every 50 events.
* Ids: person `n // 50 + 1000`; auction `3 * (n // 50) + k + 1000` for the
  k-th auction of its 50 events. Categories 10..14.
* Bids go to the hot auction (the first of the newest hundred: the newest
  id that is a multiple of 100, counted from 1000) half the time, else to
  one of the last 100 auctions or up to 10 ahead of the newest (an id not
  made yet); bidders are the hot bidder (the second of the newest hundred
  people) 3 times in 4, else one of the last 1,000 people or up to 10
  ahead. Sellers are the hot seller (the first of the newest hundred
  people) 3 times in 4.
* Prices `round(10 ** (6u) * 100)` for `u` uniform in [0, 1): 1.00 to
  1,000,000.00 in cents, log-uniform. An auction's reserve is its initial bid
  plus another price; it expires 1 ms to twice the time 100 auctions take
  (up to ~333 ms at the default rate, ~167 ms on average) after it opens.
* Event time rises at a fixed rate: event `n` happens at
  `BASE_TIME_MS + n * 1000 // rate` milliseconds (10,000 events/s by
  default: 10 events share each millisecond), in order.
* Strings (names, e-mails, descriptions, the `extra` padding that brings a
  bid to ~100 bytes, a person to ~200, an auction to ~500) have the
  reference's lengths; their letters are slices of one seeded random text
  (making each letter costs more than the rest of an event), and a bid's
  `extra` is one of 4,096 such slices.

Events are plain tuples, the kind first and the event time (int ms) second:

    person  (PERSON, time, id, name, email, credit_card, city, state, extra)
    auction (AUCTION, time, id, item_name, description, initial_bid, reserve,
             expires, seller, category, extra)
    bid     (BID, time, auction, bidder, price, extra)

Determinism and shares. The reference seeds a `java.util.Random` per event;
seeding a Python `Random` costs more than making the event, so events come
in blocks of `BLOCK` (100: two cycles of 50), each made from a `Random`
seeded by the block's number. Every event is therefore a function of its
number alone, and kernel `index` of `peers` makes the blocks
`index, index + peers, ...` (`share`): the union of the shares is the
one-kernel stream for any number of kernels. Blocks dealt round robin
rather than contiguous ranges keep every kernel's event time within a few
blocks of the others' (10 ms of event time per block at the default rate),
so the watermark, the minimum over kernels, follows the stream closely and
windows close as they would on one kernel; with contiguous ranges, kernel 0
would hold the first half of the time line and kernel 1 the second, and
every window of the second half would wait, open, for kernel 0 to finish.
"""

from __future__ import annotations

import functools
import string
from itertools import chain
from random import Random

PERSON, AUCTION, BID = 0, 1, 2
KIND, TIME = 0, 1  # every event's first two fields

# field positions
P_ID, P_NAME, P_EMAIL, P_CARD, P_CITY, P_STATE, P_EXTRA = range(2, 9)
A_ID, A_ITEM, A_DESCRIPTION, A_INITIAL, A_RESERVE, A_EXPIRES, A_SELLER, A_CATEGORY, A_EXTRA = range(2, 11)
B_AUCTION, B_BIDDER, B_PRICE, B_EXTRA = range(2, 6)

# the reference generator's defaults (GeneratorConfig, NexmarkConfiguration)
PERSON_PROPORTION, AUCTION_PROPORTION, BID_PROPORTION = 1, 3, 46
TOTAL_PROPORTION = PERSON_PROPORTION + AUCTION_PROPORTION + BID_PROPORTION
FIRST_PERSON_ID = 1000
FIRST_AUCTION_ID = 1000
FIRST_CATEGORY_ID = 10
NUM_CATEGORIES = 5
HOT_AUCTION_RATIO = 2  # 1 - 1/2 of bids go to a hot auction
HOT_SELLERS_RATIO = 4  # 1 - 1/4 of auctions by a hot seller
HOT_BIDDERS_RATIO = 4  # 1 - 1/4 of bids by a hot bidder
HOT_BATCH = 100  # a hot auction or person is the first of the last 100 (AuctionGenerator...)
NUM_IN_FLIGHT_AUCTIONS = 100
NUM_ACTIVE_PEOPLE = 1000
PERSON_ID_LEAD = 10  # ids not made yet that bids and auctions may name
AUCTION_ID_LEAD = 10
AVG_PERSON_BYTES, AVG_AUCTION_BYTES, AVG_BID_BYTES = 200, 500, 100

DEFAULT_RATE = 10_000  # events per second of event time
BASE_TIME_MS = 1_700_000_000_000  # event time of event 0 (2023-11-14), ms since the epoch
BLOCK = 2 * TOTAL_PROPORTION  # events made from one seeded Random
SEED = 2024

US_STATES = ("AZ", "CA", "ID", "OR", "WA", "WY")
US_CITIES = ("Phoenix", "Los Angeles", "San Francisco", "Boise", "Portland", "Bend", "Redmond",
             "Seattle", "Kent", "Cheyenne")
FIRST_NAMES = ("Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah", "Deiter",
               "Walter")
LAST_NAMES = ("Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones", "Noris")

# events until 100 more auctions have been made: an auction's horizon
_EVENTS_FOR_AUCTIONS = NUM_IN_FLIGHT_AUCTIONS * TOTAL_PROPORTION // AUCTION_PROPORTION
_TEXT_SIZE = 1 << 14


@functools.cache
def _text(seed: int) -> str:
    """The random letters (and a few spaces) that strings are cut from."""
    letters = string.ascii_lowercase * 2 + " "  # a space about one time in 53
    return "".join(Random(seed).choices(letters, k=_TEXT_SIZE + 512))


def _extra_length(current: int, average: int) -> tuple[int, int]:
    """(minimum, spread) of `extra`'s length so that the event averages
    `average` bytes (StringsGenerator.nextExtra)."""
    if current > average:
        return 0, 0
    wanted = average - current
    delta = round(wanted * 0.2)
    return wanted - delta, 2 * delta


_BID_EXTRA = _extra_length(8 * 4, AVG_BID_BYTES)  # four 8-byte fields before it
_BID_EXTRAS = 4096  # bids draw their `extra` from this many strings


@functools.cache
def _bid_extras(seed: int) -> tuple[str, ...]:
    """The strings a bid's `extra` is one of: lengths as the reference's, cut
    once (a slice per bid costs as much as a fifth of the rest of a bid)."""
    rng = Random(seed + 1)
    text = _text(seed)
    low, spread = _BID_EXTRA
    cuts = [(int(rng.random() * _TEXT_SIZE), low + int(rng.random() * spread)) for _ in range(_BID_EXTRAS)]
    return tuple(text[at : at + length] for at, length in cuts)


def price(u: float) -> int:
    """PriceGenerator.nextPrice for a uniform `u` in [0, 1)."""
    return int(10.0 ** (u * 6.0) * 100.0 + 0.5)


class Generator:
    """The events numbered 0 .. `events` - 1, made block by block."""

    def __init__(self, events: int, rate: int = DEFAULT_RATE, seed: int = SEED) -> None:
        if events < 0 or rate <= 0:
            raise ValueError(f"need events >= 0 and rate > 0, got {events}, {rate}")
        self.events = events
        self.rate = rate
        self.seed = seed

    def __repr__(self) -> str:
        return f"Generator(events={self.events}, rate={self.rate}, seed={self.seed})"

    def time(self, n: int) -> int:
        """Event `n`'s event time, in ms since the epoch."""
        return BASE_TIME_MS + n * 1000 // self.rate

    def blocks(self) -> int:
        return -(-self.events // BLOCK)

    def share(self, index: int, peers: int):
        """Kernel `index` of `peers`: its events, lazily (an iterator)."""
        return chain.from_iterable(map(self.block, range(index, self.blocks(), peers)))

    def all(self) -> list:
        """Every event, in order: the one-kernel stream."""
        return list(self.share(0, 1))

    def block(self, b: int) -> list:
        """The events of block `b`, in order."""
        rng = Random(self.seed << 32 | b)
        rand = rng.random
        text = _text(self.seed)
        extras = _bid_extras(self.seed)
        rate = self.rate
        first = b * BLOCK
        stop = min(first + BLOCK, self.events)
        out: list = []
        append = out.append
        for cycle in range(first // TOTAL_PROPORTION, -(-stop // TOTAL_PROPORTION)):
            start = cycle * TOTAL_PROPORTION
            end = min(start + TOTAL_PROPORTION, stop)
            # the newest person and auction so far, in this cycle (base 0)
            last_person = cycle * PERSON_PROPORTION + PERSON_PROPORTION - 1
            last_auction = cycle * AUCTION_PROPORTION + AUCTION_PROPORTION - 1
            people = last_person + 1
            active = min(people, NUM_ACTIVE_PEOPLE)
            people_from = people - active + FIRST_PERSON_ID  # a random person: from + [0, span)
            people_span = active + PERSON_ID_LEAD
            n = start
            if n < end:
                append(self._person(n, cycle, rand, text))
                n += 1
            while n < end and n < start + PERSON_PROPORTION + AUCTION_PROPORTION:
                append(self._auction(n, cycle, rand, text, people_from, people_span))
                n += 1
            if n >= end:
                continue
            # bids: everything that depends only on the cycle, once
            hot_auction = last_auction // HOT_BATCH * HOT_BATCH + FIRST_AUCTION_ID
            auctions_from = max(last_auction - NUM_IN_FLIGHT_AUCTIONS, 0) + FIRST_AUCTION_ID
            auctions_span = last_auction + FIRST_AUCTION_ID - auctions_from + 1 + AUCTION_ID_LEAD
            hot_bidder = last_person // HOT_BATCH * HOT_BATCH + 1 + FIRST_PERSON_ID
            hot_auctions = 1.0 - 1.0 / HOT_AUCTION_RATIO
            hot_bidders = 1.0 - 1.0 / HOT_BIDDERS_RATIO
            # past the hot share, the rest of a uniform r is uniform again
            auctions_scale = auctions_span / (1.0 - hot_auctions)
            people_scale = people_span / (1.0 - hot_bidders)
            for n in range(n, end):  # noqa: B020 (the bids go on from the auctions' n)
                r = rand()
                if r < hot_auctions:
                    auction = hot_auction
                else:
                    auction = auctions_from + int((r - hot_auctions) * auctions_scale)
                r = rand()
                if r < hot_bidders:
                    bidder = hot_bidder
                else:
                    bidder = people_from + int((r - hot_bidders) * people_scale)
                amount = int(10.0 ** (rand() * 6.0) * 100.0 + 0.5)  # price()
                append((BID, BASE_TIME_MS + n * 1000 // rate, auction, bidder, amount,
                        extras[int(rand() * _BID_EXTRAS)]))
        return out

    def _person(self, n: int, cycle: int, rand, text: str) -> tuple:
        name = f"{FIRST_NAMES[int(rand() * len(FIRST_NAMES))]} {LAST_NAMES[int(rand() * len(LAST_NAMES))]}"
        email = f"{_cut(text, rand, 7)}@{_cut(text, rand, 5)}.com"
        card = " ".join(f"{int(rand() * 10000):04d}" for _ in range(4))
        city = US_CITIES[int(rand() * len(US_CITIES))]
        state = US_STATES[int(rand() * len(US_STATES))]
        size = 8 + len(name) + len(email) + len(card) + len(city) + len(state)
        return (PERSON, self.time(n), cycle * PERSON_PROPORTION + FIRST_PERSON_ID, name, email, card,
                city, state, _extra(text, rand, size, AVG_PERSON_BYTES))

    def _auction(self, n: int, cycle: int, rand, text: str, people_from: int, people_span: int) -> tuple:
        k = n - cycle * TOTAL_PROPORTION - PERSON_PROPORTION  # this cycle's k-th auction
        auction_id = cycle * AUCTION_PROPORTION + k + FIRST_AUCTION_ID
        r = rand()
        hot = 1.0 - 1.0 / HOT_SELLERS_RATIO
        if r < hot:  # the first of the last 100 people
            seller = cycle * PERSON_PROPORTION // HOT_BATCH * HOT_BATCH + FIRST_PERSON_ID
        else:
            seller = people_from + int((r - hot) / (1.0 - hot) * people_span)
        category = FIRST_CATEGORY_ID + int(rand() * NUM_CATEGORIES)
        initial = price(rand())
        now = self.time(n)
        horizon = self.time(n + _EVENTS_FOR_AUCTIONS) - now
        expires = now + 1 + int(rand() * max(horizon * 2, 1))
        item = _cut(text, rand, 20)
        description = _cut(text, rand, 100)
        reserve = initial + price(rand())
        size = 8 + len(item) + len(description) + 8 * 5
        return (AUCTION, now, auction_id, item, description, initial, reserve, expires, seller, category,
                _extra(text, rand, size, AVG_AUCTION_BYTES))


def _cut(text: str, rand, most: int) -> str:
    """A string of 3 to `most` - 1 characters, trimmed (StringsGenerator.nextString)."""
    length = 3 + int(rand() * (most - 3))
    at = int(rand() * _TEXT_SIZE)
    return text[at : at + length].strip()


def _extra(text: str, rand, size: int, average: int) -> str:
    low, spread = _extra_length(size, average)
    at = int(rand() * _TEXT_SIZE)
    return text[at : at + low + int(rand() * spread)]
