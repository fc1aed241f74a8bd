"""KGAT with its authors' protocol: user and item embeddings initialised from a BPR-MF trained on the same
split (their ``--pretrain -1``), then KGAT trained at each learning rate and bit width; test Recall@20 of
both (BPR-MF in fp32: the starting point is the same for every width).

    python benchmarks/bench_kgat_pretrain.py --data ../shared/data/lastfm-kgcn --seeds 0 --lrs 1e-4 3e-4 1e-3
    python benchmarks/bench_kgat_pretrain.py --data ../shared/data/lastfm-kgcn --seeds 0 1 2 --lrs 1e-4 --bits 32 2
    python benchmarks/bench_kgat_pretrain.py --smoke      # toy synthetic data, 1 epoch each (run by the tests)

BPR-MF and KGAT use their published settings for the dataset (`TOPK_DEFAULTS`), fp32, except KGAT's
learning rate; KGAT's ``node_embedding`` rows of users and items get BPR-MF's tables (same d = 64).
"""

from __future__ import annotations

import argparse
import sys

import torch

from tinykg.train.loop import seed_everything
from tinykg.train.run import compression_for, load_or_generate
from tinykg.train.topk import TopKConfig, build_topk_model, fit_topk, topk_dataset_key, topk_hyperparameters, topk_split_for


def _config(params: dict, seed: int, lr: float | None = None, epochs: int | None = None) -> TopKConfig:
    return TopKConfig(
        epochs=epochs or params["epochs"], batch_size=params["batch_size"], kg_batch_size=params.get("kg_batch_size", 2048),
        lr=lr or params["lr"], eval_every=params.get("eval_every", 1), seed=seed, progress=False,
    )


def run(dataset, seed: int, lrs: list[float], epochs: int | None, bits_list: list[int] = (32,)) -> list[dict]:
    key = topk_dataset_key(dataset.name)
    mf_params, kgat_params = topk_hyperparameters("bprmf", key), topk_hyperparameters("kgat", key)
    seed_everything(seed)
    train, valid, test = topk_split_for(dataset, key, seed)
    mf, _ = build_topk_model("bprmf", dataset, train, compression=None, params=mf_params)
    mf_result = fit_topk(mf, train, valid, test, _config(mf_params, seed, epochs=epochs), log=lambda _: None)
    rows = [{"model": "bprmf", "seed": seed, "lr": mf_params["lr"], "bits": 32, "recall": mf_result.metrics["recall@20"],
             "best_epoch": mf_result.best_epoch, "activation_bytes": mf_result.activation_bytes}]
    for lr in lrs:
        for bits in bits_list:
            seed_everything(seed)
            kgat, sampler = build_topk_model("kgat", dataset, train, compression=compression_for(bits), params=kgat_params)
            with torch.no_grad():
                users, items = mf.user_embedding.shape[0], mf.item_embedding.shape[0]
                kgat.node_embedding[:users] = mf.user_embedding
                kgat.node_embedding[users : users + items] = mf.item_embedding
            result = fit_topk(kgat, train, valid, test, _config(kgat_params, seed, lr, epochs), kg_sampler=sampler,
                              log=lambda _: None)
            rows.append({"model": "kgat from bprmf", "seed": seed, "lr": lr, "bits": bits,
                         "recall": result.metrics["recall@20"], "best_epoch": result.best_epoch,
                         "activation_bytes": result.activation_bytes})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--data", help="dataset directory (default: the synthetic default)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-4, 3e-4, 1e-3], help="KGAT learning rates")
    parser.add_argument("--bits", type=int, nargs="+", default=[32], choices=(32, 8, 4, 2, 1),
                        help="KGAT's activation widths (32 = fp32)")
    args = parser.parse_args(argv)
    dataset = load_or_generate(None if args.smoke else args.data, synthetic_size="toy" if args.smoke else "default")
    epochs = 1 if args.smoke else None
    lrs = args.lrs[:1] if args.smoke else args.lrs
    bits_list = [32, 2] if args.smoke else args.bits  # the smoke run covers a compressed KGAT too
    rows = [row for seed in args.seeds for row in run(dataset, seed, lrs, epochs, bits_list)]
    print(f"# bench_kgat_pretrain on {dataset.name}")
    print("| model | seed | lr | bits | test Recall@20 | best epoch | activation bytes/step |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['seed']} | {r['lr']:g} | {r['bits']} | {r['recall']:.4f} | {r['best_epoch']} | "
              f"{r['activation_bytes']:,} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
