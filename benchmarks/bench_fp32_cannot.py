"""Train what fp32 cannot: full-graph KGAT on a synthetic graph too big for fp32 in this machine's memory.

    python benchmarks/bench_fp32_cannot.py --triples 1e7 --limit-gib 20 --steps 4
    python benchmarks/bench_fp32_cannot.py --smoke        # a tiny graph, both runs complete (run by the tests)

Each run is a child process that caps its own address space first (RLIMIT_AS = ``--limit-gib``), so an
allocation past the cap raises an out-of-memory error inside torch (caught and reported) instead of the
machine swapping or the kernel's OOM killer choosing a victim on a shared machine.

1. fp32 (no compression) and 2-bit KGAT (published settings, `SyntheticConfig.sized(triples)`): build the
   graph and the model, then ``--steps`` BPR training steps (forward over the whole collaborative KG,
   backward, Adam) on distinct batches of the published size. Reported: outcome, the exact bytes held for
   backward in step 1 (`ActivationTracker`), per-step loss and time, peak RSS and peak address space, and
   the eval-mode loss of the first batch before and after the steps (no dropout: a like-for-like check that
   the updates lower the objective; per-step losses on distinct batches are noisy).
2. What fp32 would need at full size: fp32 (and 2-bit) steps on scaled-down graphs (``--fractions`` of the
   size), each in its own child; their activation bytes, peak RSS and peak address space are fitted linearly on the graph's
   sizes (CKG edges, nodes) and extrapolated to the full graph. The fit is checked on the largest scaled
   size it did not see, and the 2-bit extrapolation against the 2-bit count measured at full size.

Only KGAT's phase I (propagation + BPR) runs: it holds every graph-sized activation; the TransR phase works
on per-batch triples and the attention refresh runs without gradient.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench_capacity import GIB, MIB, RESULTS_DIR, is_out_of_memory, limit_address_space, peak_rss_bytes
from tinykg.data import SyntheticConfig, make_synthetic
from tinykg.profile import ActivationTracker
from tinykg.train.run import compression_for, write_json_atomic
from tinykg.train.topk import PairSet, build_topk_model, sample_negatives, topk_hyperparameters, topk_split_for

MACHINE_GIB = 24  # the machine the demonstration is about


def _peak_address_space() -> int | None:
    """VmPeak of this process (bytes): what RLIMIT_AS is compared against."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmPeak:"):
            return int(line.split()[1]) * 1024
    return None


def _requested_bytes(message: str) -> int | None:
    match = re.search(r"allocate (\d+) bytes", message)
    return int(match.group(1)) if match else None


# --------------------------------------------------------------------------------------------------------
# Child: one run under the limit
# --------------------------------------------------------------------------------------------------------


def _probe_loss(model, batch) -> float:
    """BPR loss of ``batch`` in eval mode without gradient (no dropout: the same function before and after
    training, so the two values show whether the updates lowered the objective)."""
    model.eval()
    with torch.no_grad():
        value = model.loss(*batch).item()
    model.train()
    return value


def child_run(bits: int, triples: int, limit_bytes: int, steps: int, seed: int = 0) -> dict:
    """Build KGAT on ``SyntheticConfig.sized(triples)`` and run ``steps`` BPR steps at ``bits``, in this
    process, after capping its address space at ``limit_bytes``."""
    limit_address_space(limit_bytes)
    record: dict = {"bits": bits, "requested_triples": triples, "limit_bytes": limit_bytes, "steps_requested": steps,
                    "status": "running", "phase": "build", "losses": [], "step_seconds": []}
    start = time.perf_counter()
    try:
        torch.manual_seed(seed)
        dataset = make_synthetic(SyntheticConfig.sized(triples), seed=0)
        train, _, _ = topk_split_for(dataset, "synthetic", seed)
        params = topk_hyperparameters("kgat", "synthetic")
        model, _ = build_topk_model("kgat", dataset, train, compression=compression_for(bits), params=params)
        record.update(num_triples=int(dataset.kg.num_triples), num_train_interactions=int(train.num_interactions),
                      ckg_nodes=int(model.num_nodes), ckg_edges=int(model.head_index.numel()),
                      batch_size=params["batch_size"], lr=params["lr"])
        dataset = None  # the model holds the graph it needs
        record["build_seconds"] = time.perf_counter() - start
        optimizer = torch.optim.Adam(model.parameters(), lr=params["lr"])
        # Distinct batches as the training loop draws them: shuffled positives, uniform unseen negatives.
        rng = np.random.default_rng([seed, 1])
        rows = rng.permutation(train.num_interactions)[: steps * params["batch_size"]]
        users, positives = train.user_index[rows], train.item_index[rows]
        negatives = sample_negatives(users, PairSet(train.user_index, train.item_index, train.num_items), train.num_items, rng)
        first = tuple(torch.as_tensor(a[: params["batch_size"]], dtype=torch.long) for a in (users, positives, negatives))
        record["phase"] = "probe loss before training"
        record["probe_loss_before"] = _probe_loss(model, first)
        model.train()
        for step in range(steps):
            record["phase"] = f"step {step + 1}"
            part = slice(step * params["batch_size"], (step + 1) * params["batch_size"])
            batch = tuple(torch.as_tensor(a[part], dtype=torch.long) for a in (users, positives, negatives))
            began = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)  # before the forward: last step's gradients are not held through it
            if step == 0:
                with ActivationTracker(model, exclude=batch) as tracker:
                    loss = model.loss(*batch)
                record["activation_bytes"] = tracker.report().total_bytes
            else:
                loss = model.loss(*batch)
            loss.backward()
            optimizer.step()
            record["losses"].append(loss.item())
            record["step_seconds"].append(time.perf_counter() - began)
            loss = None
        record["phase"] = "probe loss after training"
        record["probe_loss_after"] = _probe_loss(model, first)
        record["status"] = "completed"
    except (RuntimeError, MemoryError) as error:
        if not is_out_of_memory(error):
            raise
        message = str(error).splitlines()[0]
        record.update(status="out_of_memory", error_type=type(error).__name__, error=message[:300],
                      failed_allocation_bytes=_requested_bytes(message))
    record["seconds"] = time.perf_counter() - start
    record["peak_rss_bytes"] = peak_rss_bytes()
    record["peak_address_space_bytes"] = _peak_address_space()
    return record


def run_in_child(bits: int, triples: int, limit_bytes: int, steps: int, timeout: float) -> dict:
    """`child_run` in a fresh Python process; a child that dies without a report is reported as such."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        command = [sys.executable, __file__, "--child", "--bits", str(bits), "--triples", str(triples),
                   "--limit-bytes", str(limit_bytes), "--steps", str(steps), "--result", str(out)]
        try:
            proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"bits": bits, "requested_triples": triples, "limit_bytes": limit_bytes, "status": "timeout"}
        if out.exists():
            return json.loads(out.read_text())
        return {"bits": bits, "requested_triples": triples, "limit_bytes": limit_bytes, "status": "crashed",
                "returncode": proc.returncode, "stderr": proc.stderr[-2000:]}


# --------------------------------------------------------------------------------------------------------
# Parent: the demonstration and the extrapolation
# --------------------------------------------------------------------------------------------------------


def _fit(points: list[dict], target: str) -> np.ndarray:
    x = np.array([[p["ckg_edges"], p["ckg_nodes"], 1.0] for p in points], dtype=np.float64)
    y = np.array([p[target] for p in points], dtype=np.float64)
    coefficients, *_ = np.linalg.lstsq(x, y, rcond=None)
    return coefficients


def extrapolate(points: list[dict], target: str, sizes: dict) -> dict:
    """Linear fit of ``target`` on (CKG edges, nodes, 1) over ``points``; checked on the largest point
    after fitting the others, then refitted on all and evaluated at ``sizes``."""
    points = sorted(points, key=lambda p: p["ckg_edges"])
    check = None
    if len(points) >= 4:
        held_out = points[-1]
        predicted = float(np.dot(_fit(points[:-1], target), [held_out["ckg_edges"], held_out["ckg_nodes"], 1.0]))
        check = predicted / held_out[target] - 1.0
    value = float(np.dot(_fit(points, target), [sizes["ckg_edges"], sizes["ckg_nodes"], 1.0]))
    return {"value": value, "held_out_relative_error": check, "num_points": len(points)}


def _gib(value) -> str:
    return "n/a" if value is None else f"{value / GIB:.2f}"


def _probe_text(r: dict) -> str:
    before, after = r.get("probe_loss_before"), r.get("probe_loss_after")
    if before is None:
        return "n/a"
    return f"{before:.4f} -> " + ("n/a" if after is None else f"{after:.4f}")


def runs_table(runs: list[dict]) -> str:
    lines = [
        "| bits | triples | CKG nodes | CKG edges | limit (GiB) | outcome | activation GiB (step 1) | peak RSS GiB | peak address space GiB | build s | step s | BPR loss per step | batch-1 loss before -> after (eval) |",
        "|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in runs:
        outcome = r["status"]
        if r["status"] == "out_of_memory":
            asked = r.get("failed_allocation_bytes")
            outcome = f"out of memory in {r['phase']} ({r['error_type']}" + (f", allocating {asked / MIB:,.0f} MiB)" if asked else ")")
        steps = ", ".join(f"{s:.0f}" for s in r.get("step_seconds", []))
        losses = ", ".join(f"{v:.4f}" for v in r.get("losses", []))
        count = lambda k: f"{r[k]:,}" if r.get(k) is not None else "n/a"  # noqa: E731
        build = f"{r['build_seconds']:.0f}" if r.get("build_seconds") is not None else "n/a"
        lines.append(
            f"| {r['bits']} | {count('num_triples')} | {count('ckg_nodes')} | {count('ckg_edges')} | {r['limit_bytes'] / GIB:g} | {outcome} | "
            f"{_gib(r.get('activation_bytes'))} | {_gib(r.get('peak_rss_bytes'))} | {_gib(r.get('peak_address_space_bytes'))} | "
            f"{build} | {steps} | {losses} | {_probe_text(r)} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a tiny graph; both runs complete")
    parser.add_argument("--triples", type=lambda s: int(float(s)), default=10_000_000, help="requested KG triples")
    parser.add_argument("--limit-gib", type=float, default=20.0, help="address-space limit of each run")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--fractions", type=float, nargs="+", default=[1 / 64, 1 / 32, 1 / 16, 1 / 8],
                        help="scaled-down graphs measured to extrapolate fp32's need")
    parser.add_argument("--scaled-bits", type=int, nargs="+", choices=(32, 2), default=[32, 2],
                        help="bit widths run on the scaled-down graphs (2: checks the extrapolation at full size)")
    parser.add_argument("--scaled-steps", type=int, default=2, help="steps per scaled-down run (2: the peak includes Adam's state)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per child run")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "capacity_fp32_cannot.json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--bits", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--limit-bytes", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        record = child_run(args.bits, args.triples, args.limit_bytes, args.steps)
        args.result.write_text(json.dumps(record))
        return 0

    if args.smoke:
        args.triples, args.limit_gib, args.steps = 5_000, 4.0, 2
        args.fractions, args.scaled_bits = [1 / 8, 1 / 4, 1 / 2], [32]
        with tempfile.TemporaryDirectory(prefix="bench_fp32_cannot_smoke_") as tmp:
            args.out = Path(tmp) / "capacity_fp32_cannot.json"  # the JSON writing is exercised, the results are left alone
            return run(args)
    return run(args)


def run(args: argparse.Namespace) -> int:
    limit = int(args.limit_gib * GIB)
    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731

    scaled = []
    for fraction in args.fractions:
        for bits in args.scaled_bits:
            record = run_in_child(bits, max(100, round(fraction * args.triples)), limit, args.scaled_steps, args.timeout)
            record["fraction"] = fraction
            scaled.append(record)
            log(f"scaled 1/{1 / fraction:g} bits={bits}: {record['status']}, activation {_gib(record.get('activation_bytes'))} GiB, "
                f"peak RSS {_gib(record.get('peak_rss_bytes'))} GiB, {record.get('seconds', 0):.0f}s")
    runs = []
    for bits in (2, 32):
        record = run_in_child(bits, args.triples, limit, args.steps, args.timeout)
        runs.append(record)
        log(f"full bits={bits}: {record['status']} {record.get('error', '')} losses {record.get('losses')}, "
            f"peak RSS {_gib(record.get('peak_rss_bytes'))} GiB, {record.get('seconds', 0):.0f}s")

    sized = next((r for r in runs if r.get("ckg_edges") is not None), None)
    estimates = {}
    if sized is not None:
        for bits in (32, 2):
            points = [r for r in scaled if r["bits"] == bits and r["status"] == "completed"]
            if len(points) >= 3:
                estimates[bits] = {target: extrapolate(points, target, sized)
                                   for target in ("activation_bytes", "peak_rss_bytes", "peak_address_space_bytes")}
    two_bit = next(r for r in runs if r["bits"] == 2)
    payload = {"triples": args.triples, "limit_bytes": limit, "steps": args.steps, "runs": runs, "scaled": scaled,
               "extrapolated": {str(b): e for b, e in estimates.items()}, "machine_gib": MACHINE_GIB,
               "torch": torch.__version__}
    write_json_atomic(args.out, payload)

    print(f"# bench_fp32_cannot: KGAT, SyntheticConfig.sized({args.triples:,}), address-space limit {args.limit_gib:g} GiB per run, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print(runs_table(runs))
    print(f"\nScaled-down graphs ({args.scaled_steps} steps each, own process, same limit):\n")
    print(runs_table(scaled))
    if estimates:
        print("\nExtrapolated to the full graph (linear in CKG edges and nodes; held-out = largest scaled graph):\n")
        targets = (("activation_bytes", "activation"), ("peak_rss_bytes", "peak RSS"), ("peak_address_space_bytes", "peak address space"))
        print("| bits | " + " | ".join(f"{label} GiB: fit (held-out error) | measured" for _, label in targets) + " |")
        print("|---:|" + "---:|---:|" * len(targets))
        for bits, e in estimates.items():
            measured = next((r for r in runs if r["bits"] == bits and r["status"] == "completed"), {})
            error = lambda v: "n/a" if v is None else f"{100 * v:+.2f}%"  # noqa: E731
            cells = [f"{_gib(e[key]['value'])} ({error(e[key]['held_out_relative_error'])}) | {_gib(measured.get(key))}" for key, _ in targets]
            print(f"| {bits} | " + " | ".join(cells) + " |")
    print(f"\n(written to {args.out})")
    losses = two_bit.get("losses", [])
    ok = two_bit["status"] == "completed" and all(np.isfinite(losses)) and np.isfinite(two_bit.get("probe_loss_after", np.nan))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
