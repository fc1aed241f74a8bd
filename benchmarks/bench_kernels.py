"""Kernel time per backend as a ratio to ``x.clone()`` of the same tensor, measured in the same run.

For an fp32 tensor (64M elements by default) and bits 1/2/4/8, each available backend (``torch`` = the
reference, ``cpu`` = the numba kernel on CPU, ``triton`` on CUDA) is timed for quantize+pack and for
unpack+dequantize; each ratio comes from interleaved runs with the clone baseline (warm-up, device
synchronisation, median; `tinykg.profile.timing.time_ratio`). Each backend's codes are also checked
against the reference's.

    python benchmarks/bench_kernels.py              # 64M elements, CUDA if present else CPU
    python benchmarks/bench_kernels.py --smoke      # 64K elements, a few seconds (run by the tests)
    python benchmarks/bench_kernels.py --out results.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from tinykg.compress import BACKENDS, Backend, CompressionConfig, quantize_ref  # noqa: E402
from tinykg.profile.timing import time_ratio  # noqa: E402

FULL_NUMEL = 64 * 2**20
SMOKE_NUMEL = 16 * 2**10


def backends_for(device: torch.device, wanted: list[str] | None = None) -> list[Backend]:
    """The reference plus every fast backend that runs natively on ``device`` (no Triton interpreter),
    restricted to ``wanted`` names when given."""
    found = [Backend.TORCH]
    for kind in (Backend.CPU, Backend.TRITON):
        if kind == Backend.TRITON and device.type != "cuda":
            continue
        impl = BACKENDS.get(kind)
        if impl is not None and impl.available(device):
            found.append(kind)
    return [kind for kind in found if wanted is None or kind.value in wanted]


def bench(numel: int, bits_list: list[int], group_size: int | str, metadata_dtype: str, device: torch.device,
          repeats: int, warmup: int, reference_repeats: int, wanted: list[str] | None = None,
          seed: int = 12345) -> list[dict]:
    x = torch.randn(numel, generator=torch.Generator().manual_seed(0)).to(device)
    baseline = x.clone
    rows = []
    for bits in bits_list:
        config = CompressionConfig(bits=bits, group_size=group_size, metadata_dtype=metadata_dtype)
        ref_codes = quantize_ref(x, config, seed).codes
        for kind in backends_for(device, wanted):
            impl = BACKENDS[kind]
            packed = impl.quantize(x, config, seed)  # also compiles / loads the kernel
            same = bool(torch.equal(packed.codes, ref_codes))
            runs = reference_repeats if kind == Backend.TORCH else repeats
            q_ratio, q_time, q_base = time_ratio(lambda: impl.quantize(x, config, seed), baseline,
                                                 repeats=runs, warmup=warmup, device=device)
            d_ratio, d_time, d_base = time_ratio(lambda: impl.dequantize(packed), baseline,
                                                 repeats=runs, warmup=warmup, device=device)
            rows.append({
                "backend": kind.value, "bits": bits, "quantize_ratio": q_ratio, "dequantize_ratio": d_ratio,
                "quantize_ms": 1e3 * q_time, "dequantize_ms": 1e3 * d_time,
                "clone_ms": 1e3 * (q_base + d_base) / 2, "same_codes_as_reference": same,
            })
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        "| backend | bits | quantize+pack / clone | unpack+dequantize / clone | quantize ms | dequantize ms "
        "| clone ms | codes == reference |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['backend']} | {r['bits']} | {r['quantize_ratio']:.2f}x | {r['dequantize_ratio']:.2f}x "
            f"| {r['quantize_ms']:.3g} | {r['dequantize_ms']:.3g} | {r['clone_ms']:.3g} "
            f"| {'yes' if r['same_codes_as_reference'] else 'NO'} |"
        )
    return "\n".join(lines)


def describe(device: torch.device) -> dict:
    info = {"device": str(device), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "machine": platform.processor() or platform.machine()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        import numba

        info["numba"] = numba.__version__
    except ImportError:
        pass
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        pass
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help=f"{SMOKE_NUMEL} elements, 2 repeats")
    parser.add_argument("--numel", type=int, default=None, help=f"elements (default {FULL_NUMEL})")
    parser.add_argument("--bits", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--group-size", default="256", help="a power of two or 'row'")
    parser.add_argument("--metadata-dtype", default="fp16", choices=["fp16", "bf16", "fp32"])
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per measurement (default 7)")
    parser.add_argument("--reference-repeats", type=int, default=3, help="timed runs for the slow reference")
    parser.add_argument("--backends", nargs="+", default=None, choices=[b.value for b in Backend if b != Backend.AUTO],
                        help="only these (default: every available one)")
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    numel = args.numel or (SMOKE_NUMEL if args.smoke else FULL_NUMEL)
    repeats = args.repeats or (2 if args.smoke else 7)
    group_size = args.group_size if args.group_size == "row" else int(args.group_size)
    rows = bench(numel, args.bits, group_size, args.metadata_dtype, device, repeats, warmup=1,
                 reference_repeats=min(repeats, args.reference_repeats), wanted=args.backends)
    info = describe(device)
    print(f"# Kernel time / x.clone(): {numel} fp32 elements, group {group_size}, {args.metadata_dtype} metadata")
    print(", ".join(f"{k}={v}" for k, v in info.items()))
    print()
    print(markdown(rows))
    if args.out:
        Path(args.out).write_text(json.dumps({"numel": numel, "group_size": group_size,
                                              "metadata_dtype": args.metadata_dtype, **info, "rows": rows},
                                             indent=2))
    return 0 if all(r["same_codes_as_reference"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
