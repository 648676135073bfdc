"""Loops (`Stream.iterate`): graph algorithms and the cost of a round.

    python -m benches.loops            # 1,000,000 edges (several minutes)
    python -m benches.loops --quick    # 20,000 edges (smoke test)

1. Connected components by label propagation on a random graph (E edges
   between E/10 vertices, undirected), on 1 and 2 kernels, beside the same
   label propagation as a plain-Python loop over dicts, union-find, and
   networkx's `connected_components` when networkx is installed (it is not
   a dependency). Every answer is checked against union-find.
2. PageRank, 10 rounds (damping 0.85) on the same graph's edges taken as
   directed, on 1 and 2 kernels, beside a plain-Python loop (and networkx's
   `pagerank` when installed: it iterates to a tolerance, not 10 rounds,
   so only its time is shown). Every rank is checked against the plain
   loop's within 1e-9.
3. The overhead of a round: a loop that feeds one record back for R
   rounds, on 1, 2 and 3 kernels: seconds per round.

Wall seconds, median of --runs runs (a shared, noisy 2-core machine), and
the CPU seconds of the same run (this process's and its kernel processes',
user + system): on a machine other work shares, a kernel waits for a CPU
and each round waits for the slowest kernel, so the wall clock says as much
about the neighbours as about the run; the CPU seconds say what the run
itself cost. `--only components,pagerank,empty` runs some sections.
"""

from __future__ import annotations

import argparse
import random
import resource
import statistics
import time
from collections import Counter

from benches._report import machine, table
from kernel import Dataflow, run

DAMPING = 0.85
PAGERANK_ROUNDS = 10


def random_graph(edges: int, seed: int = 20) -> tuple[int, list[tuple[int, int]]]:
    vertices = max(2, edges // 10)
    rng = random.Random(seed)
    return vertices, [(rng.randrange(vertices), rng.randrange(vertices)) for _ in range(edges)]


# -- connected components ---------------------------------------------------------------

def components_flow(vertices: int, edges: list) -> tuple[Dataflow, object]:
    flow = Dataflow("components")
    both_ways = flow.from_iterable(edges + [(v, u) for u, v in edges])
    neighbours = both_ways.key_by(lambda e: e[0]).map_values(lambda e: e[1])

    def spread(labels):
        least = labels.key_by(lambda p: p[0]).map_values(lambda p: p[1]).reduce(min)
        better = least.stateful_map(
            lambda best, label: (label, label) if best is None or label < best else (best, None))
        changed = better.filter(lambda p: p[1] is not None)
        keyed = changed.key_by(lambda p: p[0]).map_values(lambda p: p[1])
        return keyed.join(neighbours).map(lambda p: (p[1][1], p[1][0])), changed

    start = flow.from_iterable(range(vertices)).map(lambda v: (v, v))
    found = start.iterate(spread).key_by(lambda p: p[0]).map_values(lambda p: p[1]).reduce(min)
    return flow, found.collect()


def plain_label_propagation(vertices: int, edges: list) -> dict:
    adjacent: dict = {}
    for u, v in edges:
        adjacent.setdefault(u, []).append(v)
        adjacent.setdefault(v, []).append(u)
    best = {v: v for v in range(vertices)}
    changed = list(range(vertices))
    while changed:
        proposals: dict = {}
        for u in changed:
            label = best[u]
            for v in adjacent.get(u, ()):
                if label < proposals.get(v, label + 1):
                    proposals[v] = label
        changed = [v for v, label in proposals.items() if label < best[v]]
        for v in changed:
            best[v] = proposals[v]
    return best


def union_find(vertices: int, edges: list) -> dict:
    parent = list(range(vertices))

    def find(v):
        while parent[v] != v:
            parent[v] = parent[parent[v]]
            v = parent[v]
        return v

    for u, v in edges:
        a, b = find(u), find(v)
        if a != b:
            parent[max(a, b)] = min(a, b)
    return {v: find(v) for v in range(vertices)}


# -- PageRank ---------------------------------------------------------------------------------

def pagerank_flow(vertices: int, edges: list, rounds: int) -> tuple[Dataflow, object]:
    out_degree = Counter(u for u, _ in edges)
    flow = Dataflow("pagerank")
    links = flow.from_iterable(edges).key_by(lambda e: e[0]).map_values(
        lambda e: (e[1], 1.0 / out_degree[e[0]]))
    base = (1 - DAMPING) / vertices

    def step(ranks):  # (vertex, rank, rounds done)
        keyed = ranks.key_by(lambda r: r[0]).map_values(lambda r: (r[1], r[2]))
        shares = keyed.join(links).map(lambda p: ((p[1][1][0], p[1][0][1]), p[1][0][0] * p[1][1][1]))
        own = ranks.map(lambda r: ((r[0], r[2]), 0.0))
        summed = shares.union(own).key_by(lambda p: p[0]).map_values(lambda p: p[1]).sum()
        new = summed.map(lambda p: (p[0][0], base + DAMPING * p[1], p[0][1] + 1))
        return new.filter(lambda r: r[2] < rounds), new.filter(lambda r: r[2] == rounds)

    start = flow.from_iterable([(v, 1.0 / vertices, 0) for v in range(vertices)])
    return flow, start.iterate(step).collect()


def plain_pagerank(vertices: int, edges: list, rounds: int) -> dict:
    out_degree = Counter(u for u, _ in edges)
    weighted = [(u, v, 1.0 / out_degree[u]) for u, v in edges]
    ranks = [1.0 / vertices] * vertices
    base = (1 - DAMPING) / vertices
    for _ in range(rounds):
        incoming = [0.0] * vertices
        for u, v, w in weighted:
            incoming[v] += ranks[u] * w
        ranks = [base + DAMPING * x for x in incoming]
    return dict(enumerate(ranks))


# -- a round's overhead -------------------------------------------------------------------

def empty_loop_flow(rounds: int) -> Dataflow:
    flow = Dataflow("empty-loop")
    flow.from_iterable([0]).iterate(lambda s: (s, s.filter(lambda x: False)), max_rounds=rounds)
    return flow


# -- running ------------------------------------------------------------------------------------

def cpu_seconds() -> float:
    """User + system seconds of this process and of its children waited for
    (the kernel processes of a run on cores, once it has returned)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def run_seconds(flow: Dataflow, cores: int) -> float:
    return run_measured(flow, cores)[0]


def run_measured(flow: Dataflow, cores: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one run."""
    cpu = cpu_seconds()
    start = time.perf_counter()
    run(flow, cores=cores)
    return time.perf_counter() - start, cpu_seconds() - cpu


def median_run(runs: int, make, check, cores: int) -> tuple[float, float]:
    """Median wall seconds, and the CPU seconds of that run."""
    measured = []
    for _ in range(runs):
        flow, out = make()
        measured.append(run_measured(flow, cores))
        check(out.items)
    return sorted(measured)[(len(measured) - 1) // 2]


def median_plain(runs: int, fn, check) -> tuple[float, float]:
    """Median wall seconds of `fn()`, and the CPU seconds of that run."""
    measured = []
    for _ in range(runs):
        cpu = time.process_time()
        start = time.perf_counter()
        result = fn()
        measured.append((time.perf_counter() - start, time.process_time() - cpu))
        check(result)
    return sorted(measured)[(len(measured) - 1) // 2]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20,000 edges, fewer rounds (smoke test)")
    parser.add_argument("--edges", type=int, default=None, help="edges of the random graph (1,000,000)")
    parser.add_argument("--runs", type=int, default=None, help="runs per figure (median)")
    parser.add_argument("--only", default="components,pagerank,empty",
                        help="sections to run, comma-separated (components, pagerank, empty)")
    args = parser.parse_args(argv)
    sections = set(args.only.split(","))
    if not sections <= {"components", "pagerank", "empty"}:
        parser.error(f"--only: unknown sections {sorted(sections - {'components', 'pagerank', 'empty'})}")
    edges_count = args.edges or (20_000 if args.quick else 1_000_000)
    runs = args.runs or (1 if args.quick else 3)
    vertices, edges = random_graph(edges_count)
    print(f"{machine()}; {edges_count:,} edges, {vertices:,} vertices; median of {runs} runs")
    try:
        import networkx
    except ImportError:
        networkx = None

    if "components" in sections:
        components(runs, vertices, edges, networkx)
    if "pagerank" in sections:
        pagerank(runs, vertices, edges, networkx)
    if "empty" in sections:
        empty_loop(runs, 200 if args.quick else 2_000)


def components(runs: int, vertices: int, edges: list, networkx) -> None:
    expected = union_find(vertices, edges)

    def same_components(items):
        assert dict(items) == expected

    rows = []
    plain, cpu = median_plain(runs, lambda: plain_label_propagation(vertices, edges),
                              lambda r: r == expected or same_components(r.items()))
    rows.append(["plain-Python label propagation", 1, plain, cpu, 1.0])
    rows.append(["union-find (plain Python)", 1,
                 *median_plain(runs, lambda: union_find(vertices, edges), lambda r: None), float("nan")])
    if networkx is not None:
        def nx_components():
            graph = networkx.Graph()
            graph.add_nodes_from(range(vertices))
            graph.add_edges_from(edges)
            return list(networkx.connected_components(graph))
        rows.append(["networkx connected_components", 1, *median_plain(runs, nx_components, lambda r: None),
                     float("nan")])
    for cores in (1, 2):
        took, cpu = median_run(runs, lambda: components_flow(vertices, edges), same_components, cores)
        rows.append(["iterate (label propagation)", cores, took, cpu, plain / took])
    print(table("Connected components", ["", "kernels", "seconds", "CPU seconds", "speed vs plain loop"],
                rows))


def pagerank(runs: int, vertices: int, edges: list, networkx) -> None:
    reference = plain_pagerank(vertices, edges, PAGERANK_ROUNDS)

    def same_ranks(items):
        got = {v: rank for v, rank, _ in items}
        assert got.keys() == reference.keys()
        assert all(abs(got[v] - reference[v]) <= 1e-9 for v in reference)

    rows = []
    plain, cpu = median_plain(runs, lambda: plain_pagerank(vertices, edges, PAGERANK_ROUNDS), lambda r: None)
    rows.append(["plain-Python loop", 1, plain, cpu, 1.0])
    if networkx is not None:
        def nx_pagerank():
            graph = networkx.DiGraph()
            graph.add_nodes_from(range(vertices))
            graph.add_edges_from(edges)
            return networkx.pagerank(graph, alpha=DAMPING)
        rows.append(["networkx pagerank (to tolerance)", 1, *median_plain(runs, nx_pagerank, lambda r: None),
                     float("nan")])
    for cores in (1, 2):
        took, cpu = median_run(runs, lambda: pagerank_flow(vertices, edges, PAGERANK_ROUNDS), same_ranks,
                               cores)
        rows.append(["iterate", cores, took, cpu, plain / took])
    print(table(f"PageRank, {PAGERANK_ROUNDS} rounds",
                ["", "kernels", "seconds", "CPU seconds", "speed vs plain loop"], rows))


def empty_loop(runs: int, rounds: int) -> None:
    rows = []
    for cores in (1, 2, 3):
        took = statistics.median(run_seconds(empty_loop_flow(rounds), cores) for _ in range(runs))
        short = statistics.median(run_seconds(empty_loop_flow(1), cores) for _ in range(runs))
        rows.append([cores, rounds, took, (took - short) / (rounds - 1) * 1e6])
    print(table("An empty loop: the cost of a round", ["kernels", "rounds", "seconds", "us per round"], rows))


if __name__ == "__main__":
    main()
