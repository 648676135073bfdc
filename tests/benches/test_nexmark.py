"""NEXMark (benches/nexmark.py): the generator is deterministic per event
number and splits into disjoint, complete shares; every query equals its
plain-loop reference exactly on 1, 2 and 3 kernels."""

from __future__ import annotations

import re
import statistics
from collections import Counter

import pytest

from benches import _nexmark_queries as queries
from benches import _nexmark_reference as reference
from benches._nexmark_generator import (
    AUCTION,
    B_AUCTION,
    B_BIDDER,
    BASE_TIME_MS,
    BID,
    BLOCK,
    PERSON,
    Generator,
)
from kernel import Dataflow, run

# 33 s of event time (150 events/s): several windows of every
# query, and auctions (which last ~1,666 events) that close mid-stream
EVENTS, RATE = 5_000, 150


@pytest.fixture(scope="module")
def events() -> list:
    return Generator(EVENTS, RATE).all()


# -- the generator ------------------------------------------------------------------


@pytest.mark.parametrize("peers", [1, 2, 3, 4])
def test_shares_are_the_one_kernel_stream_dealt_out_block_by_block(events, peers):
    generator = Generator(EVENTS, RATE)
    for index in range(peers):
        expected = [e for n, e in enumerate(events) if n // BLOCK % peers == index]
        assert list(generator.share(index, peers)) == expected


def test_an_event_depends_only_on_its_number():
    longer = Generator(3 * BLOCK + 37).all()
    assert Generator(BLOCK + 7).all() == longer[: BLOCK + 7]
    assert Generator(3 * BLOCK + 37).all() == longer
    assert Generator(BLOCK + 7, seed=7).all() != longer[: BLOCK + 7]


def test_every_block_draws_its_own_numbers(events):
    prices = {tuple(e[4] for e in events[b * BLOCK : (b + 1) * BLOCK] if e[0] == BID)
              for b in range(EVENTS // BLOCK)}
    assert len(prices) == EVENTS // BLOCK


def test_every_50_events_are_1_person_3_auctions_46_bids_with_rising_ids_and_times(events):
    kinds = [e[0] for e in events]
    assert kinds[:50] == [PERSON] + [AUCTION] * 3 + [BID] * 46
    assert kinds == kinds[:50] * (EVENTS // 50)
    assert [e[2] for e in events if e[0] == PERSON] == list(range(1000, 1000 + EVENTS // 50))
    assert [e[2] for e in events if e[0] == AUCTION] == list(range(1000, 1000 + 3 * EVENTS // 50))
    assert [e[1] for e in events] == [BASE_TIME_MS + n * 1000 // RATE for n in range(EVENTS)]


def test_bids_name_recent_or_hot_auctions_and_people(events):
    hot_auctions = hot_bidders = 0
    for n, e in enumerate(events):
        if e[0] != BID:
            continue
        newest_auction, newest_person = 3 * (n // 50) + 2 + 1000, n // 50 + 1000
        assert newest_auction - 100 <= e[B_AUCTION] <= newest_auction + 10
        assert newest_person - 1000 <= e[B_BIDDER] <= newest_person + 10
        hot_auctions += e[B_AUCTION] == (newest_auction - 1000) // 100 * 100 + 1000
        hot_bidders += e[B_BIDDER] == (newest_person - 1000) // 100 * 100 + 1001
    bids = EVENTS * 46 // 50
    assert 0.45 < hot_auctions / bids < 0.6  # half, and a few of the others by chance
    assert 0.72 < hot_bidders / bids < 0.8  # three in four


# -- the queries ------------------------------------------------------------------


@pytest.fixture(scope="module")
def expected(events) -> dict:
    results = {name: sorted(query(events)) for name, query in reference.QUERIES.items()}
    for name, result in results.items():  # each query finds something to compare
        assert len(result) >= 3, (name, result)
    return results


@pytest.mark.parametrize("cores", [1, 2, 3])
def test_every_query_equals_its_reference(expected, cores):
    generator = Generator(EVENTS, RATE)
    flow = Dataflow("nexmark")
    # small batches: many watermarks, windows closing mid-stream
    source = flow.from_partitions(generator.share, timestamp=queries.event_time, batch_size=64)
    outputs = {name: query(source).collect() for name, query in queries.QUERIES.items()}
    run(flow, cores=cores)
    for name, out in outputs.items():
        assert sorted(out.items) == expected[name], name


@pytest.mark.parametrize("cores", [1, 2, 3])
def test_the_mid_level_and_broadcast_versions_equal_the_references_too(expected, cores):
    """The benchmark times the built-in q3, q5 and q8 beside their earlier
    hand-written versions, and q4 and q6 (their winning-bid join keyed by
    auction) beside the same with the auctions broadcast: all must give the
    references' results."""
    generator = Generator(EVENTS, RATE)
    flow = Dataflow("nexmark mid-level")
    source = flow.from_partitions(generator.share, timestamp=queries.event_time, batch_size=64)
    versions = {**queries.MID_LEVEL, **queries.BROADCAST}
    outputs = {name: query(source).collect() for name, query in versions.items()}
    run(flow, cores=cores)
    for name, out in outputs.items():
        assert sorted(out.items) == expected[name], name


def test_the_queries_results_are_what_the_definitions_say(expected):
    """A few facts of the reference results, so that a reference and a
    query wrong in the same way would show."""
    bids = expected["q0"]
    assert len(bids) == EVENTS * 46 // 50 and all(b[0] == BID for b in bids)
    assert all(auction % 123 == 0 for auction, _ in expected["q2"])
    assert {state for _, _, state, _ in expected["q3"]} <= {"OR", "ID", "CA"}
    assert {category for category, _ in expected["q4"]} <= set(range(10, 15))
    windows = Counter(start for _, start, _ in expected["q5"])
    assert len(windows) >= 8 and all(start % 2 == 0 for start in windows)
    assert len({start for *_, start in expected["q8"]}) >= 2


@pytest.mark.parametrize("cores", [1, 3])
@pytest.mark.parametrize("versions", [queries.QUERIES, queries.BROADCAST], ids=["by key", "broadcast"])
def test_winning_bids_at_the_default_rate_equal_the_reference(cores, versions):
    """At 10 events a millisecond, bids share their auction's millisecond
    and land on its last one: the ends of `[time, expires]`, which the
    slower stream above hardly reaches."""
    generator = Generator(10_000)
    events = generator.all()
    flow = Dataflow("winning bids")
    source = flow.from_partitions(generator.share, timestamp=queries.event_time, batch_size=16)
    outputs = {name: versions[name](source).collect() for name in ("q4", "q6")}
    run(flow, cores=cores)
    for name, out in outputs.items():
        assert sorted(out.items) == sorted(reference.QUERIES[name](events)), name


WINNING_BIDS = pytest.mark.parametrize(
    ("winning_bids", "cores"),
    [(queries.winning_bids, 1), (queries.winning_bids, 2), (queries.winning_bids_broadcast, 1),
     (queries.winning_bids_broadcast, 2)], ids=["by key-1", "by key-2", "broadcast-1", "broadcast-2"])


@WINNING_BIDS
def test_a_bid_that_comes_before_its_auction_counts_at_both_ends(winning_bids, cores):
    """Bids ahead of their auction (another kernel, another source) wait for
    it, also once the watermark stands at their own time, and a bid at the
    auction's time or at its expiry wins: `[time, expires]` is closed. The
    generator never makes these (a millisecond's bids follow its auctions),
    hence crafted events, times in ms."""

    def auction(time, auction_id, expires):
        return (AUCTION, time, auction_id, "item", "description", 1, 2, expires, 1001, 10, "")

    def bid(time, auction_id, price):
        return (BID, time, auction_id, 1001, price, "")

    flow = Dataflow()
    # the first batch (auction 1 at 5 ms) moves that source's watermark to 5
    # ms; auctions 2 and 3, also at 5 ms, come a tick and two later, after their bids
    auctions = flow.from_iterable([auction(5, 1, 20), auction(5, 2, 9), auction(5, 3, 9)],
                                  batch_size=1, timestamp=queries.event_time)
    bids = flow.from_iterable([bid(4, 2, 900), bid(5, 2, 90), bid(9, 2, 40), bid(10, 2, 800),
                               bid(5, 3, 30), bid(9, 3, 60), bid(10, 3, 700),
                               bid(5, 1, 3), bid(20, 1, 4), bid(21, 1, 5)], timestamp=queries.event_time)
    out = winning_bids(auctions.union(bids)).collect()
    run(flow, cores=cores)
    assert sorted(out.items) == [(1, 10, 1001, 4, 20), (2, 10, 1001, 90, 9), (3, 10, 1001, 60, 9)]


@WINNING_BIDS
def test_an_auction_closes_once_its_last_millisecond_is_past(winning_bids, cores):
    def bid(time, price):
        return (BID, time, 1, 1001, price, "")

    flow = Dataflow()
    auctions = flow.from_iterable([(AUCTION, 5, 1, "item", "description", 1, 2, 9, 1001, 10, "")],
                                  timestamp=queries.event_time)
    # one bid a batch: the watermark stands at 9 ms between the two bids at 9 ms
    bids = flow.from_iterable([bid(7, 5), bid(9, 6), bid(9, 50), bid(30, 99)], batch_size=1,
                              timestamp=queries.event_time)
    out = winning_bids(auctions.union(bids)).collect()
    run(flow, cores=cores)
    assert out.items == [(1, 10, 1001, 50, 9)]


def test_ties_for_the_top_of_a_window_are_all_reported():
    """q5 and q7 keep every record tied for the top (across kernels too);
    generated prices and counts rarely tie, hence crafted bids."""

    def bid(time, auction_id, price):
        return (BID, time, auction_id, 1001, price, "")

    # 10 s windows: auctions 1 and 2 have 2 bids each in [0, 10 s), 3 has one;
    # prices 50 tie for the top of [0, 10 s); 70 alone tops [10 s, 20 s)
    bids = [bid(1000, 1, 50), bid(2000, 2, 10), bid(3000, 1, 20), bid(4000, 2, 50), bid(5000, 3, 30),
            bid(12000, 3, 70), bid(13000, 1, 60)]
    flow = Dataflow()
    source = flow.from_iterable(bids, timestamp=queries.event_time, batch_size=2)
    hot, highest = queries.q5(source).collect(), queries.q7(source).collect()
    run(flow, cores=2)
    assert sorted(highest.items) == sorted(reference.q7(bids)) == [
        (1, 50, 1001, 1000), (2, 50, 1001, 4000), (3, 70, 1001, 12000)]
    assert sorted(hot.items) == sorted(reference.q5(bids))
    assert [(a, start, n) for a, start, n in sorted(hot.items) if start == 0.0] == [(1, 0.0, 2), (2, 0.0, 2)]


@pytest.mark.parametrize("name", sorted(reference.QUERIES))
def test_the_bytewax_queries_equal_the_references_too(expected, name):
    """The benchmark compares like with like: Bytewax's queries return the
    references' results (when Bytewax is installed)."""
    pytest.importorskip("bytewax")
    from benches import _nexmark_bytewax as bytewax

    sink = bytewax.ListSink()
    bytewax.run_query(name, Generator(EVENTS, RATE), sink)
    assert sorted(sink.items) == expected[name]


def test_the_benchmark_runs_and_prints_its_table(capsys, short_ceilings):
    from benches import nexmark

    nexmark.main(["--events", "3000", "--queries", "q0,q4", "--cores", "1,2", "--runs", "1", "--no-bytewax"])
    out = capsys.readouterr().out
    first, broadcast = (out.split(f"### {title}")[1].split("\n\n")[1] for title in (
        "NEXMark, events/s", "q4, q6: the winning-bid join keyed by auction"))
    cells = [[cell.strip() for cell in line.split("|")[1:-1]] for line in first.splitlines()
             if line.startswith("| q")]
    rows = {row[0]: row for row in cells[1:]}  # the first is the header
    assert sorted(rows) == ["q0", "q4"]
    # q4 with the auctions broadcast, beside it, on each kernel count
    assert [[cell.strip() for cell in line.split("|")[1:3]] for line in broadcast.splitlines()[2:]] == [
        ["q4", "1"], ["q4", "2"]]
    assert rows["q0"][1] == "2,760"  # results: every bid, the plain loop's count (checked in the run)
    assert rows["q0"][-1] == "155,020" and rows["q4"][-1] == "34,330"  # Flink's figures beside ours
    assert "Not the same set-up" in out
    # what the machine allowed two pinned processes meanwhile, beside "2k vs 1k"
    header = cells[0]
    ceiling = header.index("machine, 2 vs 1")
    assert header[ceiling - 1] == "2k vs 1k"
    # (a figure, not a bound: measured beside the runs on a shared machine, it
    # read 3.77x once, the one-process loop slowed by the suite's other worker)
    for row in rows.values():
        assert re.fullmatch(r"\d+\.\d\dx", row[ceiling]) and float(row[ceiling][:-1]) > 0, row


def test_engines_past_the_generator_compare_their_own_time():
    """Bytewax 3.0 s and ours 1.5 s of which 1.0 s is making the events: ours
    is 2.0 s / 0.5 s = 4x Bytewax past the generator (1 / 2 = 2x overall);
    a run noise put at or under the generator's time has no such figure."""
    from benches.nexmark import past_generator

    assert past_generator(3.0, 1.5, 1.0) == "4.0x"
    assert past_generator(3.0, 1.0, 1.0) == "n/a"
    assert past_generator(0.9, 1.5, 1.0) == "n/a"


def test_the_parallel_ceiling_is_one_process_against_itself():
    """`parallel_ceiling(1)` times the same loop in one process twice: ~1,
    whatever the machine's speed (a ceiling that compared unlike work, or
    forgot to wait for its children, would be far off). The median of
    three: the suite's other worker (pytest -n 2) may take the CPU from one
    of the timed loops (a run read 2.35 once, its two runs alone slowed; a
    median read 1.61 once, in a suite run)."""
    from benches._report import parallel_ceiling

    assert 0.5 < statistics.median(parallel_ceiling(1) for _ in range(3)) < 2.0
