"""How far a compressed step's gradients fall from fp32's: the spread over quantization seeds, per parameter.

    python benchmarks/bench_grad_noise.py --data ../shared/data/lastfm-kgcn --models kgcn --seeds 100
    python benchmarks/bench_grad_noise.py --models kgcn kgat --bits 2 4      # synthetic default
    python benchmarks/bench_grad_noise.py --smoke

For each model: one batch (as `bench_step.py` builds it), the same weights, the fp32 gradient g once and the
compressed gradient g~_s for quantizer seeds s = 0 .. S-1 (`seed_quantizer(s)`; torch's generator reset to
the same state each time, so dropout and sampling are fixed and only the rounding varies). Reported per
parameter tensor:

    rms     sqrt(mean_s ||g~_s - g||^2) / ||g||        the relative error of one step's gradient
    bias    ||mean_s g~_s - g|| / ||g||                about rms / sqrt(S) when the estimate is unbiased

A parameter whose gradient reads no rounded value shows 0 for both. Models with dropout (KGAT, KGIN): the
compressed path draws other masks than ``F.dropout`` (`tinykg.nn.compressed_dropout`), and the difference
of masks would show as bias; measure them with their dropout off:

    python benchmarks/bench_grad_noise.py --data ../shared/data/lastfm-kgcn --models kgat --set mess_dropout=0
"""

from __future__ import annotations

import argparse
import copy
import sys

import torch

from bench_models import add_set_option
from bench_step import ALL_MODELS, _ctr_model_and_batch, _topk_model_and_batch
from tinykg.compress import restoring_quantizer_seed, seed_quantizer
from tinykg.models import TOPK_MODELS
from tinykg.train.builders import default_group_size
from tinykg.train.run import compression_for, dataset_key, load_or_generate


def _gradients(model, batch) -> dict[str, torch.Tensor]:
    for p in model.parameters():
        p.grad = None
    model.loss(*batch).backward()
    return {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}


@restoring_quantizer_seed()
def measure(model_name: str, dataset, bits: int, seeds: int, batch_size: int | None, overrides: dict | None = None) -> list[dict]:
    build = _topk_model_and_batch if model_name in TOPK_MODELS else _ctr_model_and_batch
    fp32, batch = build(model_name, dataset, batch_size, "cpu", overrides)
    packed = copy.deepcopy(fp32)
    packed.compression = compression_for(bits, default_group_size(model_name, dataset_key(dataset.name), bits), "auto")
    fp32.train()
    packed.train()
    torch.manual_seed(0)
    exact = _gradients(fp32, batch)
    total = {name: torch.zeros_like(g, dtype=torch.float64) for name, g in exact.items()}
    squared = dict.fromkeys(exact, 0.0)
    for seed in range(seeds):
        torch.manual_seed(0)
        seed_quantizer(seed)
        drawn = _gradients(packed, batch)
        for name, g in exact.items():
            total[name] += drawn[name].double()
            squared[name] += float((drawn[name].double() - g.double()).pow(2).sum())
    rows = []
    for name, g in exact.items():
        norm = float(g.double().norm())
        rows.append({
            "model": model_name, "dataset": dataset.name, "bits": bits, "seeds": seeds, "parameter": name,
            "rms": (squared[name] / seeds) ** 0.5 / norm if norm else 0.0,
            "bias": float((total[name] / seeds - g.double()).norm()) / norm if norm else 0.0,
        })
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| model | dataset | bits | seeds | parameter | rms / norm | bias / norm |", "|---|---|---:|---:|---|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['dataset']} | {r['bits']} | {r['seeds']} | {r['parameter']} | "
                     f"{r['rms']:.4f} | {r['bias']:.4f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="toy synthetic data, kgcn, 3 seeds")
    parser.add_argument("--data", help="dataset directory (default: synthetic default)")
    parser.add_argument("--models", nargs="+", default=["kgcn"], choices=ALL_MODELS)
    parser.add_argument("--bits", nargs="+", type=int, default=[2], choices=(8, 4, 2, 1))
    parser.add_argument("--seeds", type=int, default=100, help="quantizer seeds per setting")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads")
    add_set_option(parser, "every model")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dataset = load_or_generate(args.data, synthetic_size="toy" if args.smoke else "default")
    seeds = 3 if args.smoke else args.seeds
    overrides = dict(args.set) or None
    rows = [row for m in args.models for bits in args.bits for row in measure(m, dataset, bits, seeds, args.batch_size, overrides)]
    print(f"# bench_grad_noise, torch {torch.__version__}")
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
