"""The CPU chunk budget of the gather / scatter ops (`tinykg.nn._chunks`): one piece against chunks.

    python benchmarks/bench_chunks.py                                 # this machine's threads
    python benchmarks/bench_chunks.py --threads 1
    python benchmarks/bench_chunks.py --smoke

Each case is one compressed op's forward + backward at 2 bits, run with the per-edge temporaries formed in
one piece and in chunks of each budget (elements per thread of the largest temporary):

- ``edge_aggregate``: ``out[target] += w * x[source]`` over E edges of D features, learned weights (KGAT's
  and KGIN's user-item form): temporaries (E, D);
- ``gather_aggregate``: ``sum_k w[b, k] * table[index[b, k]]`` over B rows of K neighbours of D features,
  learned weights (KGCN / RippleNet / CKAN): temporaries (B, K, D).

Reported: the minimum time of ``--repeats`` runs after a warm-up, per budget, and its ratio to one piece.
Every budget's output and gradients equal one piece's to the bit (`tests/nn/test_chunks.py`).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from tinykg.compress import CompressionConfig, seed_quantizer
from tinykg.nn import _chunks, edge_aggregate, gather_aggregate

CONFIG = CompressionConfig(bits=2)
BUDGETS = (1 << 18, 1 << 19, 1 << 20, 1 << 21)
ONE_PIECE = 1 << 40


def edge_case(num_edges: int, d: int):
    g = torch.Generator().manual_seed(0)
    num_nodes = max(num_edges // 10, 1)
    x = torch.randn(num_nodes, d, generator=g, requires_grad=True)
    weight = torch.rand(num_edges, generator=g, requires_grad=True)
    target = torch.randint(0, num_nodes, (num_edges,), generator=g).sort().values
    source = torch.randint(0, num_nodes, (num_edges,), generator=g)
    grad = torch.randn(num_nodes, d, generator=g)

    def run() -> None:
        edge_aggregate(target, source, weight, x, num_nodes, CONFIG).backward(grad)

    return f"edge_aggregate E={num_edges:,} D={d}", run


def gather_case(rows: int, k: int, d: int):
    g = torch.Generator().manual_seed(1)
    table = torch.randn(2000, d, generator=g, requires_grad=True)
    index = torch.randint(0, 2000, (rows, k), generator=g)
    logits = torch.randn(rows, k, generator=g, requires_grad=True)
    grad = torch.randn(rows, d, generator=g)

    def run() -> None:
        gather_aggregate(table, index, torch.softmax(logits, -1), "mean", CONFIG).backward(grad)

    return f"gather_aggregate B={rows:,} K={k} D={d}", run


def best_seconds(run, repeats: int) -> float:
    run()  # warm: plans, caches, first allocations
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(cases, repeats: int) -> list[dict]:
    rows = []
    original = _chunks.CPU_CHUNK_ELEMENTS_PER_THREAD
    try:
        for name, run in cases:
            row = {"case": name}
            for budget in (ONE_PIECE, *BUDGETS):
                _chunks.CPU_CHUNK_ELEMENTS_PER_THREAD = budget
                seed_quantizer(0)
                row[budget] = best_seconds(run, repeats)
            rows.append(row)
    finally:
        _chunks.CPU_CHUNK_ELEMENTS_PER_THREAD = original
    return rows


def markdown(rows: list[dict]) -> str:
    head = "| case | one piece (ms) | " + " | ".join(f"{b >> 10}k per thread (ms, ratio)" for b in BUDGETS) + " |"
    lines = [head, "|---|---:|" + "---:|" * len(BUDGETS)]
    for r in rows:
        one = r[ONE_PIECE]
        cells = " | ".join(f"{1e3 * r[b]:.2f} ({r[b] / one:.2f})" for b in BUDGETS)
        lines.append(f"| {r['case']} | {1e3 * one:.2f} | {cells} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.smoke:
        cases, repeats = [edge_case(5_000, 16), gather_case(512, 8, 16)], 1
    else:
        cases = [edge_case(50_000, 64), edge_case(200_000, 64), edge_case(1_000_000, 64),
                 gather_case(8192, 16, 16), gather_case(32768, 16, 16), gather_case(8192, 32, 64)]
        repeats = args.repeats
    print(f"# bench_chunks on cpu, {torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"the default budget is {_chunks.CPU_CHUNK_ELEMENTS_PER_THREAD >> 10}k elements per thread")
    print(markdown(measure(cases, repeats)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
