"""NEXMark q0-q8 as plain Python loops over the event list: the references
the tests hold our results to, and the "plain loop" the benchmark times.

Written from the query definitions (see `_nexmark_queries`), not from our
operators: brute force where that is clearest (q4 and q6 first gather every
auction, then look at every bid; windows are computed in integer
milliseconds), so that they do not depend on the order events come in.
Each returns the result records (q0-q2: an iterator over them), in no
particular order.
"""

from __future__ import annotations

from benches._nexmark_generator import (
    A_CATEGORY,
    A_EXPIRES,
    A_ID,
    A_SELLER,
    AUCTION,
    B_AUCTION,
    B_BIDDER,
    B_EXTRA,
    B_PRICE,
    BID,
    KIND,
    P_CITY,
    P_ID,
    P_NAME,
    P_STATE,
    PERSON,
    TIME,
)
from benches._nexmark_queries import (
    AUCTION_SKIP,
    EUROS_PER_DOLLAR,
    HOT_WINDOW_MS,
    LAST_CLOSED,
    Q3_CATEGORY,
    Q3_STATES,
    TUMBLE_MS,
)

# q0-q2 yield their results as they go, as a pipeline would hand them to a
# sink (a list of every bid would cost the timed plain loop the list's
# growth and the garbage collector's walks over it).


def q0(events):
    return (e for e in events if e[KIND] == BID)


def q1(events):
    return ((e[B_AUCTION], e[B_BIDDER], EUROS_PER_DOLLAR * e[B_PRICE], e[TIME], e[B_EXTRA])
            for e in events if e[KIND] == BID)


def q2(events):
    return ((e[B_AUCTION], e[B_PRICE]) for e in events
            if e[KIND] == BID and e[B_AUCTION] % AUCTION_SKIP == 0)


def q3(events) -> list:
    people: dict = {}
    auctions: list = []
    for e in events:
        if e[KIND] == PERSON and e[P_STATE] in Q3_STATES:
            people[e[P_ID]] = (e[P_NAME], e[P_CITY], e[P_STATE])
        elif e[KIND] == AUCTION and e[A_CATEGORY] == Q3_CATEGORY:
            auctions.append((e[A_SELLER], e[A_ID]))
    return [(*people[seller], auction) for seller, auction in auctions if seller in people]


def winners(events) -> dict:
    """auction id -> (its highest bid within [time, expires], the auction)."""
    auctions = {e[A_ID]: e for e in events if e[KIND] == AUCTION}
    best: dict = {}
    for e in events:
        if e[KIND] != BID:
            continue
        auction = auctions.get(e[B_AUCTION])
        if auction is not None and auction[TIME] <= e[TIME] <= auction[A_EXPIRES]:
            if e[B_AUCTION] not in best or e[B_PRICE] > best[e[B_AUCTION]][0]:
                best[e[B_AUCTION]] = (e[B_PRICE], auction)
    return best


def q4(events) -> list:
    events = list(events)  # two passes
    totals: dict = {}
    for price, auction in winners(events).values():
        total, count = totals.get(auction[A_CATEGORY], (0, 0))
        totals[auction[A_CATEGORY]] = (total + price, count + 1)
    return [(category, total / count) for category, (total, count) in totals.items()]


def q5(events) -> list:
    size, step = HOT_WINDOW_MS
    counts: dict = {}  # (window number, auction) -> bids
    for e in events:
        if e[KIND] == BID:
            last = e[TIME] // step  # the newest window that holds it; it is in size // step
            for j in range(last - size // step + 1, last + 1):
                slot = (j, e[B_AUCTION])
                counts[slot] = counts.get(slot, 0) + 1
    most: dict = {}
    for (j, _), n in counts.items():
        most[j] = max(most.get(j, 0), n)
    return [(auction, j * step / 1000, n) for (j, auction), n in counts.items() if n == most[j]]


def q6(events) -> list:
    events = list(events)
    closes = sorted((auction[A_EXPIRES], auction[A_ID], auction[A_SELLER], price)
                    for price, auction in winners(events).values())
    recent: dict = {}
    out = []
    for _, _, seller, price in closes:
        prices = recent.setdefault(seller, [])
        prices.append(price)
        del prices[:-LAST_CLOSED]
        out.append((seller, sum(prices) / len(prices)))
    return out


def q7(events) -> list:
    top: dict = {}  # window number -> (price, [bids])
    for e in events:
        if e[KIND] == BID:
            j = e[TIME] // TUMBLE_MS
            bid = (e[B_AUCTION], e[B_PRICE], e[B_BIDDER], e[TIME])
            if j not in top or e[B_PRICE] > top[j][0]:
                top[j] = (e[B_PRICE], [bid])
            elif e[B_PRICE] == top[j][0]:
                top[j][1].append(bid)
    return [bid for _, bids in top.values() for bid in bids]


def q8(events) -> list:
    people: dict = {}  # (person, window number) -> name
    sellers: set = set()  # (seller, window number)
    for e in events:
        if e[KIND] == PERSON:
            people[e[P_ID], e[TIME] // TUMBLE_MS] = e[P_NAME]
        elif e[KIND] == AUCTION:
            sellers.add((e[A_SELLER], e[TIME] // TUMBLE_MS))
    return [(person, name, j * TUMBLE_MS / 1000) for (person, j), name in people.items()
            if (person, j) in sellers]


QUERIES = {"q0": q0, "q1": q1, "q2": q2, "q3": q3, "q4": q4, "q5": q5, "q6": q6, "q7": q7, "q8": q8}
