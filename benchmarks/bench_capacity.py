"""Capacity under a fixed activation-memory budget, and the growth of activation memory with the graph.

    python benchmarks/bench_capacity.py --parts batch --data synthetic ../shared/data/lastfm-kgcn
    python benchmarks/bench_capacity.py --parts graph
    python benchmarks/bench_capacity.py --parts growth --fit-sizes 2e4 5e4 2e5 5e5 2e6 5e6
    python benchmarks/bench_capacity.py --smoke          # toy sizes, a few seconds (run by the tests)

(The "train what fp32 cannot" demonstration is benchmarks/bench_fp32_cannot.py.)

batch   For the sampled-neighbourhood models (kgcn, kgnn-ls, ripplenet, ckan): the largest batch size
        whose training step holds at most ``--batch-budget-mib`` for backward, per bits setting.
graph   For the full-graph models (kgat, kgin): the largest synthetic graph (`SyntheticConfig.sized(n)`,
        n = requested KG triples) whose BPR step at the published batch holds at most ``--graph-budget-mib``.
growth  The activation bytes of one KGAT / KGIN step on synthetic graphs of the given sizes, fp32 and
        compressed. Sizes that do not fit under the memory limit are estimated from a least-squares fit of
        the measured bytes on the graph's sizes (edges, nodes, ...), and the fit is checked on a size it did
        not see (``--fit-sizes`` adds measured sizes; the largest measured size is held out).

``--measure held`` (the default) counts what autograd holds for backward; ``--measure peak`` counts what
a whole training step needs at its peak, the budget a device's memory sets: how far the bytes allocated
rise above their level at the step's start during forward, backward and the Adam update
(`tinykg.profile.peak_allocated`, exact on the CPU; Adam's state exists before the step, made by one
update with zero gradients, and the gradients are cleared). Every probe then runs a whole profiled step,
Adam's update included, so the parameters move from probe to probe: the peak does not depend on them.

What ``held`` counts: the exact bytes of the storages autograd holds for backward after the forward of one
training step (`tinykg.profile.ActivationTracker`, through `measure_step_activation`): parameters, model
buffers and the input batch are held anyway and excluded. The count is deterministic for a given batch and
graph, so every probe is one forward pass (no training, no backward: the bytes are counted before backward
would free them); the largest size found is then checked with one full forward + backward.

Search: an exponential probe (doubling from a start size) brackets the answer, then bisection narrows it
until ``hi - lo <= max(1, resolution * lo)``; ``largest`` is the biggest size that fitted and
``smallest_over`` the smallest that did not. It assumes the bytes grow with the size (checked: linear in
the batch; near-linear in the graph size).

The process limits its own address space (``--memory-limit-gib``, RLIMIT_AS) so that an oversized probe
fails with an out-of-memory error (recorded as not fitting) instead of exhausting a shared machine.

Outputs (``--out-dir``, default benchmarks/results): ``capacity.json`` -- a list of rows
``{"model", "bits", "budget_bytes", "largest", "kind": "batch" | "triples", ...}`` (rows of the same
model / bits / kind / dataset are replaced, others kept, so the parts can run separately);
``capacity_growth.json`` -- a list of ``{"model", "bits", "requested_triples", "num_triples",
"activation_bytes", "measured", ...}``; and the markdown tables on stdout.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from tinykg.data import SyntheticConfig, ctr_split, make_synthetic
from tinykg.data.ckg import build_ckg, kg_with_inverse
from tinykg.profile import ActivationTracker, peak_allocated
from tinykg.train.builders import build_ctr_model, default_group_size
from tinykg.train.loop import measure_step_activation
from tinykg.train.run import CTR_MODELS, compression_for, dataset_key, load_or_generate, write_json_atomic
from tinykg.train.topk import build_topk_model, first_batch, topk_hyperparameters, topk_split_for

GRAPH_MODELS = ("kgat", "kgin")
BITS = (32, 8, 4, 2, 1)
MIB = 1 << 20
GIB = 1 << 30
RESULTS_DIR = Path(__file__).resolve().parent / "results"


# --------------------------------------------------------------------------------------------------------
# Process memory
# --------------------------------------------------------------------------------------------------------


def limit_address_space(limit_bytes: int | None) -> None:
    """Cap this process's virtual address space (RLIMIT_AS): an allocation past it fails with an error
    (torch: RuntimeError "can't allocate memory", numpy: MemoryError) rather than the machine swapping or
    the OOM killer stepping in. RLIMIT_AS bounds everything the process maps, hence its resident memory."""
    if not limit_bytes:
        return
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit_bytes = min(limit_bytes, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, hard))


def is_out_of_memory(error: BaseException) -> bool:
    """True for the errors an allocation past the address-space limit raises."""
    if isinstance(error, MemoryError):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and ("can't allocate memory" in text or "cannot allocate memory" in text)


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# --------------------------------------------------------------------------------------------------------
# The search
# --------------------------------------------------------------------------------------------------------


def largest_fitting(fits: Callable[[int], bool], start: int, resolution: float, maximum: int) -> tuple[int, int | None, int]:
    """Largest ``x`` in ``[1, maximum]`` with ``fits(x)``, for a ``fits`` that is True up to a threshold.

    Exponential probe from ``start`` (doubling up, or halving down if ``start`` does not fit), then
    bisection until ``hi - lo <= max(1, resolution * lo)``. Returns ``(lo, hi, probes)``: ``lo`` fitted
    (0 if even 1 does not), ``hi`` did not (None if ``maximum`` fitted).
    """
    probes = 0

    def probe(x: int) -> bool:
        nonlocal probes
        probes += 1
        return fits(x)

    x = max(1, min(start, maximum))
    if probe(x):
        lo = x
        while True:
            if lo >= maximum:
                return lo, None, probes
            x = min(2 * lo, maximum)
            if not probe(x):
                hi = x
                break
            lo = x
    else:
        hi = x
        while True:
            if hi == 1:
                return 0, 1, probes
            x = hi // 2
            if probe(x):
                lo = x
                break
            hi = x
    while hi - lo > max(1, int(resolution * lo)):
        mid = (lo + hi) // 2
        if probe(mid):
            lo = mid
        else:
            hi = mid
    return lo, hi, probes


def _by_reference_bytes(model, batch) -> int:
    """Bytes of model buffers (graph structures) that autograd references for backward: held by the model
    anyway, so `ActivationTracker` does not count them; reported as the fixed, batch-independent part."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        with ActivationTracker(None, exclude=[*model.parameters(), *batch]) as everything:
            loss = model.loss(*batch)
        total = everything.report().total_bytes
        del loss
        torch.manual_seed(0)
        counted = measure_step_activation(model, batch, exclude=batch).total_bytes
    return total - counted


def _step_bytes(model, batch) -> int:
    torch.manual_seed(0)  # dropout / node dropout draw sizes from the global generator: fix them
    return measure_step_activation(model, batch, exclude=batch).total_bytes


def adam_with_state(model) -> torch.optim.Adam:
    """An Adam over the model's parameters whose state (two moments per parameter) already exists, as in
    any step after the first: one update with zero gradients, which moves no parameter."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return optimizer


def _step_peak(model, batch, optimizer) -> int:
    """Peak bytes allocated above the start of one whole training step (forward, backward, Adam update)."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    gc.collect()
    torch.manual_seed(0)

    def step():
        loss = model.loss(*batch)
        loss.backward()
        optimizer.step()

    peak = peak_allocated(step)[1]
    optimizer.zero_grad(set_to_none=True)
    return peak


def _full_step_ok(model, batch) -> bool:
    """One forward + backward completes with a finite loss (no optimizer step)."""
    model.train()
    torch.manual_seed(0)
    loss = model.loss(*batch)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return bool(torch.isfinite(loss))


# --------------------------------------------------------------------------------------------------------
# Largest batch (sampled-neighbourhood models)
# --------------------------------------------------------------------------------------------------------


def _ctr_batch(train, batch_size: int) -> tuple[torch.Tensor, ...]:
    """The first ``batch_size`` training rows; past the end of the split the rows repeat (the activation
    bytes depend on the batch size only)."""
    rows = np.resize(np.arange(len(train.user_index)), batch_size)
    return (
        torch.as_tensor(train.user_index[rows], dtype=torch.long),
        torch.as_tensor(train.item_index[rows], dtype=torch.long),
        torch.as_tensor(train.label[rows], dtype=torch.float32),
    )


def batch_capacity(dataset, models, bits_list, budget_bytes: int, resolution: float, max_batch: int = 1 << 24, log=print,
                   measure: str = "held") -> list[dict]:
    """Largest batch per (model, bits) under ``budget_bytes`` of activation memory (``measure="held"``) or
    of a step's peak (``"peak"``); rows of capacity.json."""
    key = dataset_key(dataset.name)
    train, _, _ = ctr_split(dataset.interactions, seed=0)
    rows = []
    for name in models:
        torch.manual_seed(0)
        model = build_ctr_model(name, dataset, train, compression=None, seed=0, dataset_key=key)
        model.train()
        for bits in bits_list:
            model.compression = compression_for(bits, default_group_size(name, key, bits))
            start = time.perf_counter()
            if measure == "peak":
                optimizer = adam_with_state(model)
                fits = lambda b: _step_peak(model, _ctr_batch(train, b), optimizer) <= budget_bytes  # noqa: E731
                largest, smallest_over, probes = largest_fitting(fits, 256, resolution, max_batch)
                peak = _step_peak(model, _ctr_batch(train, largest), optimizer) if largest else None
                row = {
                    "model": name, "bits": bits, "budget_bytes": budget_bytes, "largest": largest, "kind": "batch",
                    "measure": "peak", "dataset": dataset.name, "smallest_over": smallest_over, "resolution": resolution,
                    "bytes_at_largest": peak, "probes": probes, "seconds": time.perf_counter() - start,
                }
                rows.append(row)
                log(f"batch  {dataset.name} {name} bits={bits}: largest {largest:,} under a {budget_bytes / MIB:g} MiB "
                    f"step peak (over at {smallest_over}), {probes} probes, {row['seconds']:.1f}s")
                continue
            fits = lambda b: _step_bytes(model, _ctr_batch(train, b)) <= budget_bytes  # noqa: E731
            largest, smallest_over, probes = largest_fitting(fits, 256, resolution, max_batch)
            bytes_at = _step_bytes(model, _ctr_batch(train, largest)) if largest else None
            step_ok = _full_step_ok(model, _ctr_batch(train, largest)) if largest else None
            # Two batch sizes next to the answer, multiples of the group size (no partial quantization
            # groups), split the bytes into a per-sample slope and a batch-independent intercept. Taken
            # there, not at small batches: index tensors widen (int16 -> int32) as the batch grows.
            top = max(512, largest // 256 * 256)
            b_top, b_below = (_step_bytes(model, _ctr_batch(train, b)) for b in (top, top - 256))
            per_sample = (b_top - b_below) / 256
            fixed = b_top - top * per_sample
            per_sample_small = _step_bytes(model, _ctr_batch(train, 256)) / 256
            by_reference = _by_reference_bytes(model, _ctr_batch(train, 256))
            row = {
                "model": name, "bits": bits, "budget_bytes": budget_bytes, "largest": largest, "kind": "batch",
                "measure": "held", "dataset": dataset.name, "smallest_over": smallest_over, "resolution": resolution,
                "bytes_at_largest": bytes_at, "per_sample_bytes": per_sample, "fixed_bytes": fixed,
                "slope_batches": [top - 256, top], "per_sample_bytes_at_256": per_sample_small,
                "by_reference_bytes": by_reference, "full_step_ok": step_ok, "probes": probes,
                "seconds": time.perf_counter() - start,
            }
            rows.append(row)
            log(f"batch  {dataset.name} {name} bits={bits}: largest {largest:,} (over at {smallest_over}), "
                f"{per_sample:,.1f} B/sample + {fixed:,.0f} B fixed, {probes} probes, {row['seconds']:.1f}s")
        model = None  # free the model (and its sampled structures) before the next one is built
        gc.collect()
    return rows


# --------------------------------------------------------------------------------------------------------
# Largest graph (full-graph models) and growth with the graph
# --------------------------------------------------------------------------------------------------------


def graph_sizes(dataset, train) -> dict:
    """The sizes the full-graph models' memory depends on."""
    ckg = build_ckg(train, dataset.kg)
    kg_inverse = kg_with_inverse(dataset.kg, max(dataset.kg.num_entities, train.num_items))
    return {
        "num_triples": int(dataset.kg.num_triples),
        "num_users": int(train.num_users),
        "num_entities": int(max(dataset.kg.num_entities, train.num_items)),
        "num_train_interactions": int(train.num_interactions),
        "ckg_edges": int(ckg.num_edges),  # KGAT's propagation edges
        "ckg_nodes": int(ckg.num_nodes),
        "kg_edges": int(kg_inverse.num_triples),  # KGIN's KG edges (with inverses)
    }


# Which graph sizes each model's activation bytes are linear in (plus a constant: the per-batch BPR head).
FIT_FEATURES = {
    "kgat": ("ckg_edges", "ckg_nodes"),
    "kgin": ("kg_edges", "num_train_interactions", "num_entities", "num_users"),
}


class GraphProbe:
    """Builds the synthetic graph of ``n`` requested triples and its model, measures one step's bytes."""

    def __init__(self, model_name: str) -> None:
        self.model_name = model_name
        self.params = topk_hyperparameters(model_name, "synthetic")

    def build(self, n: int):
        dataset = make_synthetic(SyntheticConfig.sized(n), seed=0)
        train, _, _ = topk_split_for(dataset, "synthetic", 0)
        torch.manual_seed(0)
        model, _ = build_topk_model(self.model_name, dataset, train, compression=None, params=self.params)
        model.train()
        batch = first_batch(train, self.params["batch_size"], 0)
        return dataset, train, model, batch

    def measure(self, n: int, bits: int, full_step: bool = False, peak: bool = False) -> dict:
        """``{"activation_bytes", sizes..., "oom"}`` for the graph of ``n`` requested triples (with ``peak``,
        also ``"peak_bytes"``: a whole step's peak); an out-of-memory error (under the address-space limit)
        gives ``activation_bytes=None, oom=True``."""
        start = time.perf_counter()
        result = {"requested_triples": n, "oom": False, "activation_bytes": None, "peak_bytes": None}
        try:
            dataset, train, model, batch = self.build(n)
            result.update(graph_sizes(dataset, train))
            model.compression = compression_for(bits)
            result["activation_bytes"] = _step_bytes(model, batch)
            if peak:
                result["peak_bytes"] = _step_peak(model, batch, adam_with_state(model))
            if full_step:
                result["by_reference_bytes"] = _by_reference_bytes(model, batch)
                result["full_step_ok"] = _full_step_ok(model, batch)
        except (RuntimeError, MemoryError) as error:
            if not is_out_of_memory(error):
                raise
            result["oom"] = True
            result["error"] = str(error).splitlines()[0][:200]
        finally:
            dataset = train = model = batch = None
            gc.collect()
        result["seconds"] = time.perf_counter() - start
        return result


def graph_capacity(models, bits_list, budget_bytes: int, resolution: float, start: int = 1000,
                   max_triples: int = 1 << 26, log=print, measure: str = "held") -> list[dict]:
    """Largest synthetic graph (requested triples) per (model, bits) under ``budget_bytes`` of activation
    memory (``measure="held"``) or of a step's peak (``"peak"``)."""
    rows = []
    peak = measure == "peak"
    counted = "peak_bytes" if peak else "activation_bytes"
    for name in models:
        probe = GraphProbe(name)
        for bits in bits_list:
            seen: dict[int, dict] = {}

            def fits(n: int) -> bool:
                seen[n] = probe.measure(n, bits, peak=peak)
                got = seen[n][counted]
                return got is not None and got <= budget_bytes

            began = time.perf_counter()
            largest, smallest_over, probes = largest_fitting(fits, start, resolution, max_triples)
            final = probe.measure(largest, bits, full_step=True, peak=peak) if largest else {}
            row = {
                "model": name, "bits": bits, "budget_bytes": budget_bytes, "measure": measure,
                "largest": final.get("num_triples", 0), "kind": "triples", "dataset": "synthetic",
                "requested_triples": largest, "smallest_over_requested": smallest_over,
                "smallest_over_oom": bool(smallest_over is not None and seen.get(smallest_over, {}).get("oom")),
                "resolution": resolution, "bytes_at_largest": final.get(counted),
                "by_reference_bytes": final.get("by_reference_bytes"), "full_step_ok": final.get("full_step_ok"),
                "num_nodes": final.get("ckg_nodes"), "num_edges": final.get("ckg_edges"),
                "num_train_interactions": final.get("num_train_interactions"), "probes": probes,
                "seconds": time.perf_counter() - began,
            }
            rows.append(row)
            log(f"graph  {name} bits={bits}: largest {row['largest']:,} triples (requested {largest:,}; over at "
                f"{smallest_over}), {probes} probes, {row['seconds']:.1f}s")
    return rows


def _least_squares(rows: list[dict], features: tuple[str, ...]) -> np.ndarray:
    x = np.array([[r[f] for f in features] + [1.0] for r in rows], dtype=np.float64)
    y = np.array([r["activation_bytes"] for r in rows], dtype=np.float64)
    coefficients, *_ = np.linalg.lstsq(x, y, rcond=None)
    return coefficients


def _predict(coefficients: np.ndarray, sizes: dict, features: tuple[str, ...]) -> float:
    return float(np.dot(coefficients, [sizes[f] for f in features] + [1.0]))


def _sizes_of(n: int, cache: dict[int, dict]) -> dict:
    """`graph_sizes` of the synthetic graph of ``n`` requested triples (generated without a model)."""
    if n not in cache:
        dataset = make_synthetic(SyntheticConfig.sized(n), seed=0)
        train, _, _ = topk_split_for(dataset, "synthetic", 0)
        cache[n] = graph_sizes(dataset, train)
        dataset = train = None
        gc.collect()
    return cache[n]


def growth(models, bits_list, sizes: list[int], fit_sizes: list[int], memory_limit: int | None = None, log=print) -> list[dict]:
    """Activation bytes per (model, bits, graph size): measured where it fits in memory, otherwise
    estimated from the fit on the measured sizes (marked ``measured: false`` with the reason). Sizes are
    visited in increasing order; once a fit exists, a size whose predicted activation bytes alone exceed
    ``memory_limit`` is not attempted."""
    rows = []
    all_sizes = sorted(set(sizes) | set(fit_sizes))
    size_cache: dict[int, dict] = {}
    for name in models:
        probe = GraphProbe(name)
        features = FIT_FEATURES[name]
        for bits in bits_list:
            measured, missing = [], {}
            for n in all_sizes:
                if memory_limit and len(measured) >= len(features) + 1:
                    predicted = _predict(_least_squares(measured, features), _sizes_of(n, size_cache), features)
                    if predicted > memory_limit:
                        missing[n] = (f"not run: the fit predicts {predicted / GIB:.1f} GiB of activations, over the "
                                      f"{memory_limit / GIB:g} GiB address-space limit")
                        log(f"growth {name} bits={bits} n={n:,}: {missing[n]}")
                        continue
                result = probe.measure(n, bits)
                if result["activation_bytes"] is None:
                    limit_text = f" under the {memory_limit / GIB:g} GiB limit" if memory_limit else ""
                    missing[n] = f"out of memory{limit_text}: {result.get('error')}"
                    log(f"growth {name} bits={bits} n={n:,}: {missing[n]}, {result['seconds']:.1f}s")
                    continue
                size_cache[n] = {k: result[k] for k in ("num_triples", "ckg_edges", "ckg_nodes", "kg_edges",
                                                        "num_train_interactions", "num_entities", "num_users")}
                measured.append(dict(result, measured=True))
                log(f"growth {name} bits={bits} n={n:,}: {result['activation_bytes']:,} B, {result['seconds']:.1f}s")
            # Fit on all measured sizes but the largest and check it there; estimate the missing sizes from
            # the fit on every measured size.
            check = None
            if len(measured) >= len(features) + 2:
                held_out = measured[-1]
                predicted = _predict(_least_squares(measured[:-1], features), held_out, features)
                check = {"held_out_requested_triples": held_out["requested_triples"],
                         "relative_error": predicted / held_out["activation_bytes"] - 1.0,
                         "fit_points": len(measured) - 1}
                log(f"growth {name} bits={bits}: fit on {len(measured) - 1} sizes predicts the held-out "
                    f"n={held_out['requested_triples']:,} within {100 * check['relative_error']:+.3f}%")
            coefficients = _least_squares(measured, features) if len(measured) >= len(features) + 1 else None
            for result in measured:
                rows.append({"model": name, "bits": bits, **_growth_fields(result), "measured": True,
                             "in_table": result["requested_triples"] in sizes, "fit_check": check})
            for n, reason in missing.items():
                estimate = None
                if coefficients is not None:
                    estimate = round(_predict(coefficients, _sizes_of(n, size_cache), features))
                rows.append({"model": name, "bits": bits, "requested_triples": n, **size_cache.get(n, {}),
                             "activation_bytes": estimate, "measured": False, "not_measured_reason": reason,
                             "in_table": n in sizes, "fit_check": check, "fit_features": list(features)})
    return rows


def _growth_fields(result: dict) -> dict:
    keep = ("requested_triples", "num_triples", "ckg_edges", "ckg_nodes", "kg_edges", "num_train_interactions",
            "num_entities", "num_users", "activation_bytes", "seconds")
    return {k: result[k] for k in keep if k in result}


# --------------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------------


def _mib(value) -> str:
    return "n/a" if value is None else f"{value / MIB:,.2f}"


def _measure(row: dict) -> str:
    return row.get("measure", "held")  # rows from before session 17 counted the bytes held


def _vs_fp32(rows: list[dict], row: dict) -> str:
    base = [r for r in rows if r["model"] == row["model"] and r["kind"] == row["kind"] and _measure(r) == _measure(row)
            and r.get("dataset") == row.get("dataset") and r["bits"] == 32 and r["budget_bytes"] == row["budget_bytes"]]
    if not base or not base[0]["largest"]:
        return ""
    return f"{row['largest'] / base[0]['largest']:.1f}x"


def batch_table(rows: list[dict]) -> str:
    lines = [
        "| dataset | model | bits | budget (MiB) | of | largest batch | vs fp32 | MiB at largest | bytes/sample at largest | bytes/sample at 256 | fixed bytes | graph buffers by reference (MiB) | probes |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r["kind"] != "batch":
            continue
        held = _measure(r) == "held"
        lines.append(
            f"| {r['dataset']} | {r['model']} | {r['bits']} | {r['budget_bytes'] / MIB:g} | {_measure(r)} | {r['largest']:,} | "
            f"{_vs_fp32(rows, r)} | {_mib(r['bytes_at_largest'])} | "
            + (f"{r['per_sample_bytes']:,.1f} | {r['per_sample_bytes_at_256']:,.1f} | {r['fixed_bytes']:,.0f} | "
               f"{_mib(r['by_reference_bytes'])} |" if held else "n/a | n/a | n/a | n/a |")
            + f" {r['probes']} |"
        )
    return "\n".join(lines)


def graph_table(rows: list[dict]) -> str:
    lines = [
        "| model | bits | budget (MiB) | of | largest graph (triples) | vs fp32 | requested n | CKG nodes | CKG edges | MiB at largest | graph buffers by reference (MiB) | probes |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r["kind"] != "triples":
            continue
        count = lambda v: "n/a" if v is None else f"{v:,}"  # noqa: E731
        lines.append(
            f"| {r['model']} | {r['bits']} | {r['budget_bytes'] / MIB:g} | {_measure(r)} | {r['largest']:,} | {_vs_fp32(rows, r)} | "
            f"{r['requested_triples']:,} | {count(r['num_nodes'])} | {count(r['num_edges'])} | {_mib(r['bytes_at_largest'])} | "
            f"{_mib(r['by_reference_bytes'])} | {r['probes']} |"
        )
    return "\n".join(lines)


def growth_table(rows: list[dict]) -> str:
    bits_list = sorted({r["bits"] for r in rows}, reverse=True)
    header = " | ".join(f"{b if b != 32 else 'fp32'}{'-bit' if b != 32 else ''} MiB" for b in bits_list)
    lines = [
        f"| model | requested n | triples | CKG nodes | CKG edges | {header} | fp32 / {min(bits_list)}-bit |",
        "|---|---:|---:|---:|---:|" + "---:|" * len(bits_list) + "---:|",
    ]
    keys = sorted({(r["model"], r["requested_triples"]) for r in rows if r.get("in_table", True)})
    for model, n in keys:
        cells = {r["bits"]: r for r in rows if r["model"] == model and r["requested_triples"] == n}
        any_row = next(iter(cells.values()))

        def cell(bits: int) -> str:
            r = cells.get(bits)
            if r is None or r["activation_bytes"] is None:
                return "n/a"
            return f"{r['activation_bytes'] / MIB:,.1f}" + ("" if r["measured"] else " (est.)")

        fp32, low = cells.get(32), cells.get(min(bits_list))
        ratio = ""
        if fp32 and low and fp32["activation_bytes"] and low["activation_bytes"]:
            ratio = f"{fp32['activation_bytes'] / low['activation_bytes']:.1f}x"
        count = lambda k: f"{any_row[k]:,}" if any_row.get(k) is not None else "n/a"  # noqa: E731
        lines.append(
            f"| {model} | {n:,} | {count('num_triples')} | {count('ckg_nodes')} | {count('ckg_edges')} | "
            + " | ".join(cell(b) for b in bits_list) + f" | {ratio} |"
        )
    return "\n".join(lines)


def merge_rows(path: Path, new_rows: list[dict], key_fields: tuple[str, ...]) -> list[dict]:
    """Rows of the JSON list at ``path`` with the same key as a new row replaced, then the new rows."""
    old = json.loads(path.read_text()) if path.exists() else []
    def key(row: dict) -> tuple:
        return tuple(_measure(row) if k == "measure" else row.get(k) for k in key_fields)

    keys = {key(r) for r in new_rows}
    return [r for r in old if key(r) not in keys] + new_rows


def _machine() -> dict:
    return {"platform": platform.platform(), "processor": platform.machine(), "torch": torch.__version__,
            "threads": torch.get_num_threads()}


# --------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------


def _size(text: str) -> int:
    return int(float(text))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="toy sizes, every part, a few seconds")
    parser.add_argument("--parts", nargs="+", choices=("batch", "graph", "growth"), default=["batch", "graph", "growth"])
    parser.add_argument("--data", nargs="+", default=["synthetic"],
                        help="datasets of the batch part: 'synthetic' (default) or directories")
    parser.add_argument("--batch-models", nargs="+", choices=CTR_MODELS, default=list(CTR_MODELS))
    parser.add_argument("--graph-models", nargs="+", choices=GRAPH_MODELS, default=list(GRAPH_MODELS))
    parser.add_argument("--bits", type=int, nargs="+", choices=BITS, default=list(BITS))
    parser.add_argument("--growth-bits", type=int, nargs="+", choices=BITS, default=[32, 2])
    parser.add_argument("--measure", choices=("held", "peak"), default="held",
                        help="budget of the bytes held for backward (default) or of a whole step's peak (see above)")
    parser.add_argument("--batch-budget-mib", type=float, default=64.0)
    parser.add_argument("--graph-budget-mib", type=float, default=128.0)
    parser.add_argument("--batch-resolution", type=float, default=0.005, help="relative resolution of the batch search")
    parser.add_argument("--graph-resolution", type=float, default=0.02, help="relative resolution of the graph search")
    parser.add_argument("--growth-sizes", type=_size, nargs="+", default=[10**4, 10**5, 10**6, 10**7])
    parser.add_argument("--fit-sizes", type=_size, nargs="+", default=[2 * 10**4, 5 * 10**4, 2 * 10**5, 5 * 10**5, 2 * 10**6],
                        help="extra measured sizes for the growth fit (not shown in the table)")
    parser.add_argument("--memory-limit-gib", type=float, default=16.0, help="address-space limit of this process (0: none)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)

    if args.smoke:
        args.data, args.batch_models, args.graph_models, args.bits = ["toy"], ["kgcn"], ["kgat"], [32, 2]
        args.batch_budget_mib, args.graph_budget_mib = 1.0, 1.0
        args.batch_resolution, args.graph_resolution = 0.05, 0.1
        args.growth_sizes, args.fit_sizes = [500, 1000], [250, 750, 1250]
        with tempfile.TemporaryDirectory(prefix="bench_capacity_smoke_") as tmp:
            args.out_dir = Path(tmp)  # the JSON writing is exercised, the results are left alone
            return run(args)
    return run(args)


_BUDGET_OF = {"held": "activation memory", "peak": "a training step's peak"}


def run(args: argparse.Namespace) -> int:
    limit_address_space(int(args.memory_limit_gib * GIB))
    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    print(f"# bench_capacity on {platform.machine()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"address-space limit {args.memory_limit_gib:g} GiB")

    capacity_rows: list[dict] = []
    if "batch" in args.parts:
        for data in args.data:
            dataset = load_or_generate(None if data in ("synthetic", "toy") else data,
                                       synthetic_size="toy" if data == "toy" else "default")
            capacity_rows += batch_capacity(dataset, args.batch_models, args.bits, int(args.batch_budget_mib * MIB),
                                            args.batch_resolution, log=log, measure=args.measure)
        print(f"\n## Largest batch under {args.batch_budget_mib:g} MiB of {_BUDGET_OF[args.measure]}\n")
        print(batch_table(capacity_rows))
    if "graph" in args.parts:
        graph_rows = graph_capacity(args.graph_models, args.bits, int(args.graph_budget_mib * MIB), args.graph_resolution,
                                    start=200 if args.smoke else 1000, log=log, measure=args.measure)
        capacity_rows += graph_rows
        print(f"\n## Largest synthetic graph under {args.graph_budget_mib:g} MiB of {_BUDGET_OF[args.measure]}\n")
        print(graph_table(graph_rows))
    if capacity_rows:
        for row in capacity_rows:
            row["machine"] = _machine()
        path = args.out_dir / "capacity.json"
        write_json_atomic(path, merge_rows(path, capacity_rows, ("kind", "model", "bits", "dataset", "measure", "budget_bytes")))
        print(f"\n(capacity rows written to {path})")
    if "growth" in args.parts:
        rows = growth(args.graph_models, args.growth_bits, args.growth_sizes, args.fit_sizes,
                      int(args.memory_limit_gib * GIB), log=log)
        for row in rows:
            row["machine"] = _machine()
        print("\n## Activation bytes of one step vs graph size\n")
        print(growth_table(rows))
        path = args.out_dir / "capacity_growth.json"
        write_json_atomic(path, merge_rows(path, rows, ("model", "bits", "requested_triples")))
        print(f"\n(growth rows written to {path})")
    print(f"\npeak RSS {peak_rss_bytes() / GIB:.2f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
