"""Compression ratio and quantize/dequantize speed per bits x group size, against the ideal and x.clone().

    python benchmarks/bench_compress.py                    # 16M-element fp32 tensor, all settings
    python benchmarks/bench_compress.py --smoke            # tiny, seconds (run by the tests)
    python benchmarks/bench_compress.py --backend cpu --numel 67108864 --out results.json

Ratio columns: measured = fp32 bytes / PackedActivation.nbytes; ideal = 32 / (bits + 32 / group_size).
Time columns: median seconds of quantize+pack (resp. unpack+dequantize) divided by the median of
``x.clone()`` of the same tensor, interleaved in the same run.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys

import torch

from tinykg.compress import CompressionConfig, dequantize, quantize, resolve_backend
from tinykg.profile import time_ratio


def run(numel: int, bits_list, group_sizes, backend: str, device: str, repeats: int) -> list[dict]:
    x = torch.randn(numel, device=device)
    rows = []
    for bits in bits_list:
        for group_size in group_sizes:
            config = CompressionConfig(bits=bits, group_size=group_size, backend=backend)
            packed = quantize(x, config, seed=0)
            quant_ratio, quant_s, clone_s = time_ratio(lambda: quantize(x, config, seed=0), x.clone, repeats=repeats, device=device)
            deq_ratio, deq_s, _ = time_ratio(lambda: dequantize(packed, config), x.clone, repeats=repeats, device=device)
            rows.append(
                {
                    "bits": bits,
                    "group_size": group_size,
                    "ideal_ratio": config.ideal_ratio(),
                    "measured_ratio": numel * 4 / packed.nbytes,
                    "quantize_vs_clone": quant_ratio,
                    "dequantize_vs_clone": deq_ratio,
                    "quantize_s": quant_s,
                    "dequantize_s": deq_s,
                    "clone_s": clone_s,
                }
            )
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        "| bits | group | ideal ratio | measured ratio | % of ideal | quantize+pack / clone | unpack+dequantize / clone |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['bits']} | {r['group_size']} | {r['ideal_ratio']:.2f}x | {r['measured_ratio']:.2f}x | "
            f"{100 * r['measured_ratio'] / r['ideal_ratio']:.1f}% | {r['quantize_vs_clone']:.2f} | {r['dequantize_vs_clone']:.2f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny tensor, one repeat: checks the script runs")
    parser.add_argument("--numel", type=int, default=1 << 24)
    parser.add_argument("--bits", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--group-sizes", type=int, nargs="+", default=[32, 64, 128, 256])
    parser.add_argument("--backend", default="torch", choices=["auto", "torch", "cpu", "triton"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    numel, repeats = (1 << 16, 1) if args.smoke else (args.numel, args.repeats)
    impl = resolve_backend(CompressionConfig(backend=args.backend).backend, torch.device(args.device))
    rows = run(numel, args.bits, args.group_sizes, args.backend, args.device, repeats)
    print(f"# bench_compress: {numel:,} fp32 elements on {args.device} ({platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads), backend {args.backend} -> {impl.quantize.__module__}, torch {torch.__version__}")
    print(markdown(rows))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"numel": numel, "device": args.device, "backend": args.backend, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
