"""GPU check of the Triton backend: correctness against the reference, throughput against a copy.

Run through ``benchmarks/gpu_check.sh`` on a machine with one CUDA GPU, torch and triton (nothing is
installed; under 5 minutes, most of it Triton compiling ~50 kernel variants):

1. correctness: for bits 1/2/4/8 x metadata fp16/bf16/fp32 (plus fp16/bf16 inputs, odd and long "row"
   groups, round-to-nearest), the Triton backend's codes, scale, zero-point and exact groups must equal
   `quantize_ref`'s with the same seed, computed on the CPU (the specification) -- and the reference on the
   GPU is compared with the one on the CPU too; dequantization must be bitwise equal;
2. throughput for 64M fp32 elements at bits 1/2/4/8: time of quantize+pack and unpack+dequantize as a
   ratio to ``x.clone()`` (a device-to-device copy) measured in the same run, as % of the copy's
   throughput (100 / ratio; the issue's bar is >= 70%) and as bandwidth (bytes the kernel must move per
   second) in % of the copy's, for the whole backend call (which adds the ``nonzero`` sync that finds exact
   groups) and for the kernel launch alone; the PyTorch reference on the GPU alongside;
3. model step time: `measure_step_overhead` is the hook; register steps in `MODEL_STEPS`.

Prints markdown; writes JSON to ``--out`` or, when the environment variable OUT is set, to
``$OUT/gpu_check.json``. Exit status 1 when any correctness check fails. ``--smoke`` shrinks everything
(it also runs on CPU tensors under TRITON_INTERPRET=1, to test this script without a GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from tinykg.compress import CompressionConfig, dequantize_ref, quantize_ref  # noqa: E402
from tinykg.compress import triton_kernels  # noqa: E402
from tinykg.profile.timing import time_ratio  # noqa: E402

SEED = 20240607


def environment(device: torch.device) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "device": str(device),
            "cuda_available": torch.cuda.is_available(), "torch_cuda": torch.version.cuda}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError as err:
        info["triton"] = f"missing ({err})"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = props.name
        info["capability"] = f"{props.major}.{props.minor}"
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
    return info


# --------------------------------------------------------------------------------------------------------
# 1. correctness


def special_groups() -> torch.Tensor:
    """(18 * 32,) fp32: one 32-group per case the metadata rules single out (as in the tests)."""
    g = torch.Generator().manual_seed(1)
    r = torch.randn(32, generator=g)
    ramp = torch.linspace(0, 1, 32)
    cases = [
        r, torch.where(torch.arange(32) == 5, float("nan"), r), torch.where(torch.arange(32) == 7, float("inf"), r),
        torch.where(torch.arange(32) == 0, float("-inf"), r), torch.full((32,), 1.0), torch.full((32,), 0.1),
        torch.where(torch.arange(32) % 2 == 0, -0.0, 0.0), 1e6 + r, -1e6 + r, (ramp - 0.5) * 120000,
        65000 + ramp * 519, 1e-6 * r, ramp * 3e-45, 2049 + ramp, 257 + ramp, 3 * 2.0**-25 + ramp * 2.0**-20,
        -5 + ramp * 4, torch.full((32,), 1e-40),
    ]
    return torch.cat(cases)


def correctness_cases(smoke: bool) -> list[tuple[str, torch.Tensor, CompressionConfig]]:
    g = torch.Generator().manual_seed(0)
    rows = 16 if smoke else 257
    base = torch.cat([special_groups(), (torch.randn(rows * 64, generator=g) * 3).float()])
    cases = []
    for bits in (1, 2, 4, 8):
        for md in ("fp16", "bf16", "fp32"):
            cases.append(("fp32 x, G=32", base, CompressionConfig(bits=bits, group_size=32, metadata_dtype=md)))
    for dtype in (torch.float16, torch.bfloat16):
        for md in ("fp16", "bf16"):
            cases.append((f"{str(dtype)[6:]} x, G=32", base.to(dtype),
                          CompressionConfig(bits=2, group_size=32, metadata_dtype=md)))
    odd = torch.randn(33, 77, generator=g)
    for bits in (1, 2, 4):
        cases.append(("rows of 77", odd, CompressionConfig(bits=bits, group_size="row")))
    for cols in (5000, 4099):
        cases.append((f"rows of {cols}", torch.randn(3, cols, generator=g),
                      CompressionConfig(bits=2, group_size="row")))
    cases.append(("round to nearest", base, CompressionConfig(bits=2, group_size=32, stochastic=False)))
    return cases


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    a, b = a.cpu(), b.cpu()
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.is_floating_point():
        return bool(((a == b) | (a.isnan() & b.isnan())).all())
    return torch.equal(a, b)


def same_packed(p, r) -> bool:
    return p.meta == r.meta and all(same(getattr(p, n), getattr(r, n)) for n in
                                    ("codes", "scale", "zero_point", "exact_index", "exact_values"))


def check_correctness(device: torch.device, smoke: bool) -> list[dict]:
    results = []
    for name, x_cpu, config in correctness_cases(smoke):
        x = x_cpu.to(device)
        spec = quantize_ref(x_cpu, config, SEED)
        ref_dev = quantize_ref(x, config, SEED)
        packed = triton_kernels.quantize_triton(x, config, SEED)
        want = dequantize_ref(spec)
        results.append({
            "case": name, "bits": config.bits, "metadata": config.metadata_dtype,
            "group_size": config.group_size, "stochastic": config.stochastic,
            "triton_equals_reference": same_packed(packed, spec),
            "dequantize_equal": same(triton_kernels.dequantize_triton(packed), want)
            and same(triton_kernels.dequantize_triton(spec_to(spec, device)), want),
            "reference_gpu_equals_cpu": same_packed(ref_dev, spec),
            "exact_groups": int(spec.exact_index.numel()),
        })
    return results


def spec_to(packed, device):
    """A PackedActivation moved to ``device``."""
    from tinykg.compress import PackedActivation

    return PackedActivation.from_tensors([t.to(device) for t in packed.tensors()], packed.meta)


# --------------------------------------------------------------------------------------------------------
# 2. throughput


def device_time(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 2,
                back_to_back: int = 10) -> float | None:
    """Median GPU seconds per call of ``fn`` from CUDA events around ``back_to_back`` consecutive calls, so
    that host launch overhead overlaps the previous call's kernels (a sync inside ``fn`` defeats this and
    counts). None off CUDA."""
    if device.type != "cuda":
        return None
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(back_to_back):
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / back_to_back)
    return statistics.median(times)


def check_throughput(device: torch.device, numel: int, repeats: int, group_size: int = 256) -> list[dict]:
    x = torch.randn(numel, device=device)
    baseline = x.clone
    clone_device = device_time(baseline, device, repeats)
    rows = []
    for bits in (1, 2, 4, 8):
        config = CompressionConfig(bits=bits, group_size=group_size)
        packed = triton_kernels.quantize_triton(x, config, SEED)
        ref = quantize_ref(x, config, SEED)
        identical = same_packed(packed, ref)
        del ref
        measured = {
            "quantize (backend call)": lambda: triton_kernels.quantize_triton(x, config, SEED),
            "quantize (kernel launch)": lambda: triton_kernels.launch_quantize(x, config, SEED, group_size),
            "dequantize (backend call)": lambda: triton_kernels.dequantize_triton(packed),
            "dequantize (kernel launch)": lambda: triton_kernels.launch_dequantize(packed),
            "quantize (torch reference)": lambda: quantize_ref(x, config, SEED),
            "dequantize (torch reference)": lambda: dequantize_ref(packed),
        }
        metadata = numel / group_size * (2 * 2 + 1)  # fp16 scale and zero-point, one flag byte
        moved = {"quantize": 4 * numel + numel * bits / 8 + metadata,
                 "dequantize": numel * bits / 8 + metadata + 4 * numel}
        for what, fn in measured.items():
            slow = "reference" in what
            ratio, t_fn, t_clone = time_ratio(fn, baseline, repeats=max(3, repeats // 4) if slow else repeats,
                                              warmup=2, device=device)
            copy_bw = 2 * 4 * numel / t_clone
            bandwidth = moved[what.split()[0]] / t_fn
            t_device = None if slow else device_time(fn, device, repeats)
            rows.append({
                "device_percent_of_copy": 100.0 * clone_device / t_device if t_device else None,
                "bits": bits, "what": what, "ratio_to_clone": ratio, "percent_of_copy": 100.0 / ratio,
                "ms": 1e3 * t_fn, "clone_ms": 1e3 * t_clone, "GBps": bandwidth / 1e9, "copy_GBps": copy_bw / 1e9,
                "bandwidth_percent_of_copy": 100.0 * bandwidth / copy_bw, "codes_equal_reference_64M": identical,
            })
    return rows


# --------------------------------------------------------------------------------------------------------
# 3. HOOK: model step-time overhead. ``make_step(config)`` returns a zero-argument callable that runs one
# full training step (forward, backward, optimizer) of a freshly built model, compressed with ``config``
# or uncompressed when ``config`` is None. Register steps in MODEL_STEPS, e.g. {"KGCN": make_kgcn_step}.

MakeStep = Callable[[CompressionConfig | None], Callable[[], None]]


def make_ctr_step(model_name: str, overrides: dict, batch_size: int, synthetic_triples: int | None = None) -> MakeStep:
    """A training step of a CTR model on the synthetic dataset (the GPU machine has no copy of ../shared)."""

    def make(config: CompressionConfig | None) -> Callable[[], None]:
        from tinykg.data import ctr_split
        from tinykg.train.builders import build_ctr_model
        from tinykg.train.run import load_or_generate

        dataset = load_or_generate(None, synthetic_size=synthetic_triples or "default")
        train, _, _ = ctr_split(dataset.interactions, seed=0)
        torch.manual_seed(0)
        model = build_ctr_model(model_name, dataset, train, compression=config, seed=0, overrides=overrides).cuda()
        model.train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        g = torch.Generator().manual_seed(0)
        rows = torch.randint(0, len(train), (batch_size,), generator=g)
        batch = [torch.as_tensor(a[rows.numpy()]).cuda() for a in (train.user_index, train.item_index, train.label)]
        batch[2] = batch[2].float()

        def step() -> None:
            loss = model.loss(*batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        return step

    return make


MODEL_STEPS: dict[str, MakeStep] = {
    "KGCN d16 H2 K8 B8192": make_ctr_step("kgcn", {}, 8192),
    "KGCN d64 H3 K8 B4096 (Book-Crossing sizes)": make_ctr_step("kgcn", {"embedding_dim": 64, "num_layers": 3}, 4096),
    "KGNN-LS d64 H2 K8 B4096": make_ctr_step("kgnn-ls", {"embedding_dim": 64, "num_layers": 2}, 4096),
    "RippleNet d16 H2 M32 B8192": make_ctr_step("ripplenet", {}, 8192),
    "CKAN d64 L2 B4096": make_ctr_step("ckan", {"embedding_dim": 64}, 4096),
}


def measure_step_overhead(name: str, make_step: MakeStep, *, bits: int = 2, repeats: int = 20,
                          warmup: int = 3, device: torch.device | str = "cuda") -> dict:
    """Step time of the compressed model over the fp32 one (same run, interleaved) and peak memory of each."""
    config = CompressionConfig(bits=bits, backend="triton")
    plain, compressed = make_step(None), make_step(config)
    peaks = {}
    for label, step in (("fp32", plain), (f"{bits}-bit", compressed)):
        step()
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        peaks[label] = torch.cuda.max_memory_allocated(device)
    ratio, t_compressed, t_plain = time_ratio(compressed, plain, repeats=repeats, warmup=warmup, device=device)
    return {"model": name, "bits": bits, "step_ratio": ratio, "overhead_percent": 100.0 * (ratio - 1),
            "fp32_step_ms": 1e3 * t_plain, "compressed_step_ms": 1e3 * t_compressed,
            "fp32_peak_MiB": peaks["fp32"] / 2**20, "compressed_peak_MiB": peaks[f"{bits}-bit"] / 2**20,
            "peak_reduction": peaks["fp32"] / max(peaks[f"{bits}-bit"], 1)}


# --------------------------------------------------------------------------------------------------------


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    def fmt(v):
        if isinstance(v, bool):
            return "yes" if v else "no"
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    # A failed check (a column named *equal*) is bold.
    lines += ["| " + " | ".join("**NO**" if "equal" in c and r[c] is False else fmt(r[c]) for c in columns) + " |"
              for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (also runs under TRITON_INTERPRET=1)")
    parser.add_argument("--numel", type=int, default=None, help="throughput tensor size (default 64M)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", default=None, help="JSON path (default $OUT/gpu_check.json when OUT is set)")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    info = environment(device)
    print("# tinykg GPU check (Triton backend)\n")
    print(", ".join(f"{k}={v}" for k, v in info.items()), "\n")
    if not triton_kernels.available(device):
        print("Triton backend unavailable on", device, "(no GPU, triton missing, or TRITON_INTERPRET unset)")
        return 2
    report: dict = {"environment": info}

    t0 = time.perf_counter()
    correctness = check_correctness(device, args.smoke)
    report["correctness"] = correctness
    print(f"## Correctness: Triton vs quantize_ref on CPU, same seed ({time.perf_counter() - t0:.0f} s)\n")
    print(markdown_table(correctness, ["case", "bits", "metadata", "group_size", "stochastic", "exact_groups",
                                       "triton_equals_reference", "dequantize_equal",
                                       "reference_gpu_equals_cpu"]), "\n")

    numel = args.numel or (4096 if args.smoke else 64 * 2**20)
    t0 = time.perf_counter()
    throughput = check_throughput(device, numel, 3 if args.smoke else args.repeats)
    report["throughput"] = {"numel": numel, "rows": throughput}
    print(f"## Throughput: {numel} fp32 elements, G=256, fp16 metadata, vs x.clone() "
          f"({time.perf_counter() - t0:.0f} s)\n")
    print("percent_of_copy = clone time / kernel time, host timing with a sync after each call (includes "
          "Triton's host launch overhead); device_percent_of_copy = the same from CUDA events around 10 "
          "back-to-back calls (launch overhead hidden unless the call syncs); bandwidth_percent_of_copy = bytes "
          "the kernel must move per second over the copy's bytes per second (host timing)\n")
    print(markdown_table(throughput, ["bits", "what", "ratio_to_clone", "percent_of_copy", "device_percent_of_copy",
                                      "ms", "clone_ms",
                                      "GBps", "copy_GBps", "bandwidth_percent_of_copy",
                                      "codes_equal_reference_64M"]), "\n")

    steps = []
    if not args.smoke and device.type == "cuda":
        for name, make_step in MODEL_STEPS.items():
            try:
                steps.append(measure_step_overhead(name, make_step, device=device))
            except Exception as err:  # one model failing must not hide the others' numbers
                print(f"model step {name} failed: {type(err).__name__}: {err}")
    report["model_steps"] = steps
    print("## Model step time (hook: MODEL_STEPS / measure_step_overhead)\n")
    if steps:
        print(markdown_table(steps, ["model", "bits", "step_ratio", "overhead_percent", "fp32_step_ms",
                                     "compressed_step_ms", "fp32_peak_MiB", "compressed_peak_MiB",
                                     "peak_reduction"]), "\n")
    else:
        print("no model steps registered yet\n")

    ok = all(r["triton_equals_reference"] and r["dequantize_equal"] for r in correctness)
    ok = ok and all(r["codes_equal_reference_64M"] for r in throughput)
    report["all_correct"] = ok
    report["seconds"] = time.perf_counter() - start
    print(f"all correct: {ok}; {report['seconds']:.0f} s")
    out = args.out or (os.path.join(os.environ["OUT"], "gpu_check.json") if os.environ.get("OUT") else None)
    if out:
        Path(out).write_text(json.dumps(report, indent=2, default=str))
        print("wrote", out)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
