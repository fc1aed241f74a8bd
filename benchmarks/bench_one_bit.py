"""Which saved tensors' noise costs accuracy at a low width: a CTR model trained at ``--bits`` (1 by
default) with one family of ops storing at 8 bits (or with the scoring head at that width too), per seed,
with the validation AUC per epoch.

    python benchmarks/bench_one_bit.py --data ../shared/data/lastfm-kgcn --model kgcn --seeds 1 2 \\
        --variants head1 linear attention elementwise aggregate --group-size 256
    python benchmarks/bench_one_bit.py --model ripplenet --bits 2 --seeds 0 2 --variants default elementwise
    python benchmarks/bench_one_bit.py --smoke        # toy synthetic data, 1 epoch (run by the tests)

Variants (everything else at ``--bits``, default 1; the library's defaults otherwise):

* ``default``            tinykg's setting: the score's operands at 2 bits (``head_bits=2``);
* ``head1``              the score's operands at 1 bit too (``head_bits=None``, the setting before session 4);
* ``linear``, ``attention``, ``elementwise``, ``aggregate``, ``activation``: ``head1`` with every tensor that
  the ops of that `tinykg.nn` module save stored at 8 bits (``elementwise`` holds the score's product).

``--head-bits N`` keeps the score's operands at N bits in every variant but ``head1`` (to look for what
else costs accuracy once the head is settled).

A diagnostic, not a user setting: the per-module switch replaces the module's ``maybe_quantize`` for the
duration of one run.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import statistics
import sys

from tinykg.nn import _saved
from tinykg.train.run import load_or_generate, train_ctr

MODULES = ("linear", "attention", "elementwise", "aggregate", "activation")
VARIANTS = ("default", "head1", *MODULES)


@contextlib.contextmanager
def eight_bit(module_name: str | None):
    """Inside: the ops of ``tinykg.nn.<module_name>`` store what they save at 8 bits."""
    if module_name is None:
        yield
        return
    module = importlib.import_module(f"tinykg.nn.{module_name}")
    original = module.maybe_quantize

    def upgraded(x, config, *, is_output=False):
        return _saved.maybe_quantize(x, dataclasses.replace(config, bits=8), is_output=is_output)

    module.maybe_quantize = upgraded
    try:
        yield
    finally:
        module.maybe_quantize = original


def run(dataset, model: str, variant: str, seed: int, group_size, epochs: int | None, bits: int = 1,
        head_bits: int | None = None) -> dict:
    if variant == "head1":
        overrides = {"head_bits": None}
    elif head_bits is not None:  # the score's operands at this width in every other variant
        overrides = {"head_bits": head_bits}
    else:
        overrides = {} if variant == "default" else {"head_bits": None}
    if epochs:
        overrides["epochs"] = epochs
    with eight_bit(variant if variant in MODULES else None):
        result = train_ctr(model, dataset, bits=bits, group_size=group_size, seed=seed, overrides=overrides,
                           progress=False, log=lambda _: None)
    return {
        "variant": variant, "seed": seed, "auc": result["metrics"]["auc"],
        "valid_auc": [h["valid_auc"] for h in result["history"]], "activation_bytes": result["activation_bytes"],
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="toy synthetic data, kgcn, 1 epoch, two variants")
    parser.add_argument("--data", help="dataset directory (default: the synthetic default)")
    parser.add_argument("--model", default="kgcn", choices=("kgcn", "kgnn-ls", "ripplenet", "ckan"))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--group-size", type=lambda t: t if t == "row" else int(t), help="default: the library's at 1 bit")
    parser.add_argument("--epochs", type=int, help="default: the model's published setting")
    parser.add_argument("--bits", type=int, default=1, choices=(1, 2, 4), help="the width of everything else (default 1)")
    parser.add_argument("--head-bits", type=int, choices=(2, 4, 8),
                        help="the score's operands at this width in every variant but head1 (default: the model's "
                             "head_bits in 'default', --bits in the module variants)")
    args = parser.parse_args(argv)
    if args.smoke:
        dataset = load_or_generate(None, synthetic_size="toy")
        args.variants, args.seeds, args.epochs = ["default", "elementwise"], [0], 1
    else:
        dataset = load_or_generate(args.data)
    rows = []
    for variant in args.variants:
        for seed in args.seeds:
            row = run(dataset, args.model, variant, seed, args.group_size, args.epochs, args.bits, args.head_bits)
            rows.append(row)
            print(f"{variant} seed={seed}: test auc {row['auc']:.4f}, validation auc per epoch "
                  + " ".join(f"{v:.3f}" for v in row["valid_auc"]), flush=True)
    head = f", score operands at {args.head_bits} bits" if args.head_bits else ""
    print(f"\n# bench_one_bit: {args.model} on {dataset.name}, {args.bits} bit, group {args.group_size or 'default'}{head}")
    print("| variant | seeds | test AUC per seed | mean | activation bytes/step |")
    print("|---|---:|---|---:|---:|")
    for variant in args.variants:
        rs = [r for r in rows if r["variant"] == variant]
        aucs = [r["auc"] for r in rs]
        print(f"| {variant} | {len(rs)} | {' / '.join(f'{a:.4f}' for a in aucs)} | {statistics.mean(aucs):.4f} | "
              f"{rs[0]['activation_bytes']:,} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
