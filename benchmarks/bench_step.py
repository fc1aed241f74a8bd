"""End-to-end training-step time and memory, compressed vs fp32, measured side by side in one run.

    python benchmarks/bench_step.py --models kgcn kgat --bits 2                   # synthetic default, CPU
    python benchmarks/bench_step.py --data ../shared/data/lastfm-kgcn --device cuda --batch-size 4096
    python benchmarks/bench_step.py --models kgat kgin --synthetic-triples 1000000 --repeats 3
    python benchmarks/bench_step.py --data ../shared/data/lastfm-kgcn --models kgat --set mess_dropout=0
    python benchmarks/bench_step.py --models kgcn ripplenet --cpu-peak                # CPU peak memory, no timing
    python benchmarks/bench_step.py --smoke

For each model: the same weights, the same batch; one step = forward, loss, backward, Adam update (the
BCE step for the CTR models, the BPR step on (user, positive, negative) for kgat / kgin / bprmf), with
quantization seeds drawn from the quantizer's own stream as in the training loops (`seed_quantizer`).
Reported: median step time of each (interleaved runs, after warm-up) and the ratio; the exact bytes held
for backward (ActivationTracker); on CUDA, the allocator peak of one step (torch.cuda.max_memory_allocated).

``--cpu-peak`` (CPU): instead of timing, the peak memory of one step on the CPU, which PyTorch does not
count: how far the bytes held by PyTorch's CPU allocator rise above their level at the step's start
(`tinykg.profile.peak_allocated`, which replays the allocator's events from PyTorch's profiler): the CPU's
equivalent of ``torch.cuda.max_memory_allocated`` minus the memory allocated at the start. Exact and
deterministic; the gradients are cleared before the step, so that none is freed inside it. The profiler
slows the step down, so this mode times nothing. (Until session 16 this mode read the rise of the
process's resident memory with glibc's mmap threshold fixed at 64 KiB, within a page per tensor.)
"""

from __future__ import annotations

import argparse
import copy
import gc
import sys

import torch
from bench_models import add_set_option

from tinykg.compress import restoring_quantizer_seed, seed_quantizer
from tinykg.data import ctr_split
from tinykg.models import TOPK_MODELS
from tinykg.profile import peak_allocated, time_ratio
from tinykg.train.builders import build_ctr_model, default_group_size, hyperparameters
from tinykg.train.loop import measure_step_activation
from tinykg.train.run import CTR_MODELS, compression_for, dataset_key, load_or_generate
from tinykg.train.topk import build_topk_model, first_batch, topk_dataset_key, topk_hyperparameters, topk_split_for

ALL_MODELS = (*CTR_MODELS, *TOPK_MODELS)


def _step_fn(model, optimizer, batch):
    def step():
        loss = model.loss(*batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def _cuda_peak(step, device) -> int | None:
    if torch.device(device).type != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def _cpu_peak(step, model) -> int:
    """How far the CPU allocator's bytes rise above their start during one ``step`` (gradients cleared)."""
    model.zero_grad(set_to_none=True)
    gc.collect()
    return peak_allocated(step)[1]


def _ctr_model_and_batch(model_name: str, dataset, batch_size: int | None, device: str, overrides: dict | None = None):
    key = dataset_key(dataset.name)
    batch_size = batch_size or hyperparameters(model_name, key, overrides)["batch_size"]
    train, _, _ = ctr_split(dataset.interactions, seed=0)
    torch.manual_seed(0)
    model = build_ctr_model(model_name, dataset, train, compression=None, seed=0, overrides=overrides, dataset_key=key)
    rows = torch.arange(min(batch_size, len(train)))
    batch = (
        torch.as_tensor(train.user_index[rows], dtype=torch.long, device=device),
        torch.as_tensor(train.item_index[rows], dtype=torch.long, device=device),
        torch.as_tensor(train.label[rows], dtype=torch.float32, device=device),
    )
    return model, batch


def _topk_model_and_batch(model_name: str, dataset, batch_size: int | None, device: str, overrides: dict | None = None):
    key = topk_dataset_key(dataset.name)
    params = topk_hyperparameters(model_name, key, overrides)
    train, _, _ = topk_split_for(dataset, key, seed=0)
    torch.manual_seed(0)
    model, _ = build_topk_model(model_name, dataset, train, compression=None, params=params)
    return model, first_batch(train, batch_size or params["batch_size"], seed=0, device=device)


def measure(model_name: str, dataset, bits: int, batch_size: int | None, device: str, repeats: int, backend: str = "auto",
            overrides: dict | None = None, cpu_peak: bool = False) -> dict:
    build = _topk_model_and_batch if model_name in TOPK_MODELS else _ctr_model_and_batch
    fp32, batch = build(model_name, dataset, batch_size, device, overrides)
    fp32 = fp32.to(device)
    packed = copy.deepcopy(fp32)
    packed.compression = compression_for(bits, default_group_size(model_name, dataset_key(dataset.name), bits), backend)
    steps = {}
    for name, model in (("fp32", fp32), ("packed", packed)):
        model.train()
        steps[name] = _step_fn(model, torch.optim.Adam(model.parameters(), lr=1e-4), batch)
    ratio = t_packed = t_fp32 = None
    peaks = {}
    with restoring_quantizer_seed():
        seed_quantizer(0)
        if cpu_peak:
            for name, model in (("fp32", fp32), ("packed", packed)):
                steps[name]()  # warm: Adam's state, cached plans and adjacency exist before the measured step
                peaks[name] = _cpu_peak(steps[name], model)
        else:
            ratio, t_packed, t_fp32 = time_ratio(steps["packed"], steps["fp32"], repeats=repeats, warmup=2, device=device)
    return {
        "model": model_name,
        "dataset": dataset.name,
        "bits": bits,
        "batch_size": len(batch[0]),
        "device": device,
        "step_s_fp32": t_fp32,
        "step_s_packed": t_packed,
        "step_ratio": ratio,
        "activation_bytes_fp32": measure_step_activation(fp32, batch, exclude=batch).total_bytes,
        "activation_bytes_packed": measure_step_activation(packed, batch, exclude=batch).total_bytes,
        "cuda_peak_fp32": _cuda_peak(steps["fp32"], device),
        "cuda_peak_packed": _cuda_peak(steps["packed"], device),
        "cpu_peak_fp32": peaks.get("fp32"),
        "cpu_peak_packed": peaks.get("packed"),
    }


def _fmt(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def markdown(rows: list[dict]) -> str:
    """One row per model; the peak columns are the CPU's (``--cpu-peak``) or else the CUDA allocator's."""
    kind = "cpu" if any(r["cpu_peak_fp32"] is not None for r in rows) else "cuda"
    lines = [
        "| model | dataset | batch | bits | step fp32 (ms) | step packed (ms) | time ratio | activation fp32 | activation packed | "
        f"memory ratio | {kind.upper()} peak fp32 | {kind.upper()} peak packed | peak ratio |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ms = {name: None if r[f"step_s_{name}"] is None else 1e3 * r[f"step_s_{name}"] for name in ("fp32", "packed")}
        peak_fp32, peak_packed = r[f"{kind}_peak_fp32"], r[f"{kind}_peak_packed"]
        peak_ratio = f"{peak_fp32 / peak_packed:.2f}x" if peak_fp32 and peak_packed else "n/a"
        lines.append(
            f"| {r['model']} | {r['dataset']} | {r['batch_size']} | {r['bits']} | {_fmt(ms['fp32'], '.2f')} | "
            f"{_fmt(ms['packed'], '.2f')} | {_fmt(r['step_ratio'], '.3f')} | {r['activation_bytes_fp32']:,} | "
            f"{r['activation_bytes_packed']:,} | {r['activation_bytes_fp32'] / r['activation_bytes_packed']:.1f}x | "
            f"{_fmt(peak_fp32, ',')} | {_fmt(peak_packed, ',')} | {peak_ratio} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--data", help="dataset directory (default: synthetic default)")
    parser.add_argument("--models", nargs="+", default=["kgcn", "kgat"], choices=ALL_MODELS)
    parser.add_argument("--synthetic-triples", type=int, help="without --data: a synthetic graph of about this many KG triples")
    parser.add_argument("--bits", type=int, default=2, choices=(8, 4, 2, 1))
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--backend", default="auto", choices=("auto", "torch", "cpu", "triton"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (also the CPU kernels' threads)")
    parser.add_argument("--cpu-peak", action="store_true",
                        help="measure each step's peak memory on the CPU instead of its time (see above)")
    add_set_option(parser, "every model measured")
    args = parser.parse_args(argv)
    if args.cpu_peak and torch.device(args.device).type != "cpu":
        parser.error("--cpu-peak measures CPU steps: use --device cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    dataset = load_or_generate(args.data, synthetic_size="toy" if args.smoke else (args.synthetic_triples or "default"))
    repeats = 2 if args.smoke else args.repeats
    overrides = dict(args.set) or None
    rows = [measure(m, dataset, args.bits, args.batch_size, args.device, repeats, args.backend, overrides, args.cpu_peak)
            for m in args.models]
    print(f"# bench_step on {args.device}, {torch.get_num_threads()} CPU threads, torch {torch.__version__}")
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
