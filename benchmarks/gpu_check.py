"""GPU check of the Triton backend: correctness against the reference, throughput against a copy.

Run through ``benchmarks/gpu_check.sh`` on a machine with one CUDA GPU, torch and triton (nothing is
installed; under 5 minutes, most of it Triton compiling ~50 kernel variants):

1. correctness: for bits 1/2/4/8 x metadata fp16/bf16/fp32 (plus fp16/bf16 inputs, odd and long "row"
   groups, round-to-nearest), the Triton backend's codes, scale, zero-point and exact groups must equal
   `quantize_ref`'s with the same seed, computed on the CPU (the specification) -- and the reference on the
   GPU is compared with the one on the CPU too; dequantization must be bitwise equal; the mask kernels
   must write the reference's bytes and read them back;
2. throughput for 64M fp32 elements at bits 1/2/4/8: time of quantize+pack and unpack+dequantize as a
   ratio to ``x.clone()`` (a device-to-device copy) measured in the same run, as % of the copy's
   throughput (100 / ratio; the issue's bar is >= 70%) and as bandwidth (bytes the kernel must move per
   second) in % of the copy's, for the whole backend call (which waits for the kernel's exact-group
   answer) and for the kernel launch alone; the PyTorch reference on the GPU alongside;
3. model step time (`MODEL_STEPS`, every model at 2 bits against fp32, interleaved): step ratio, CUDA
   allocator peak of one step, exact bytes saved for backward, host time to issue a step, and the ratio
   when the host never waits for the exact-group answer (a timing diagnostic);
4. optional: ``--sweep`` times the quantize kernel under every launch setting in `SWEEP_SETTINGS` (codes
   checked against the reference); ``--host-overhead`` times the host cost of each layer of a compressed
   save / load; ``--profile`` prints torch.profiler tables of the ``--steps`` selected instead of timing,
   ``--host-profile`` cProfile tables of the host's Python for them;
   ``--count-ops`` counts the torch ops and Triton launches of one step of the ``--steps`` selected, fp32
   and 2-bit (also on CPU tensors under TRITON_INTERPRET=1, following the GPU's code path);
   ``--device-chunks 0 N ...`` times the model steps once per budget, the gather / scatter ops' per-edge
   temporaries in chunks of N elements on the GPU (0: one piece, the default), for the peak each leaves.

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

from tinykg.compress import (  # noqa: E402
    CompressionConfig, dequantize_ref, quantize_ref, restoring_quantizer_seed, seed_quantizer,
)
from tinykg.compress import triton_kernels  # noqa: E402
from tinykg.profile.timing import time_ratio  # noqa: E402
from tinykg.nn import _chunks  # noqa: E402

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
        # The path tinykg.nn takes: the exact-group flag read back through pinned memory after an event.
        deferred = triton_kernels.quantize_triton(x, config, SEED, defer_exact=True)
        want = dequantize_ref(spec)
        results.append({
            "case": name, "bits": config.bits, "metadata": config.metadata_dtype,
            "group_size": config.group_size, "stochastic": config.stochastic,
            "triton_equals_reference": same_packed(packed, spec) and same_packed(deferred.resolve(), spec),
            "dequantize_equal": same(triton_kernels.dequantize_triton(packed), want)
            and same(triton_kernels.dequantize_triton(spec_to(spec, device)), want),
            "reference_gpu_equals_cpu": same_packed(ref_dev, spec),
            "exact_groups": int(spec.exact_index.numel()),
        })
    results.extend(check_mask_kernels(device, smoke))
    return results


def check_mask_kernels(device: torch.device, smoke: bool) -> list[dict]:
    """The Triton mask kernels against the reference's bytes (`masks.pack_mask_ref` on the CPU), and back;
    the fused mask ops (`masks.pack_greater`, `keep_bits`, `scale_by_mask`) against their expressions, one
    row each."""
    from tinykg.compress import masks, uniform_noise

    rows = []
    g = torch.Generator().manual_seed(SEED)
    for numel in (1, 9, 4096 * 3 + 5) + (() if smoke else (2**24 + 3,)):
        mask_cpu = torch.rand(numel, generator=g) > 0.5
        bits = triton_kernels.pack_mask_triton(mask_cpu.to(device))
        ok = same(bits, masks.pack_mask_ref(mask_cpu))
        back = same(triton_kernels.unpack_mask_triton(bits, mask_cpu.shape), mask_cpu)
        rows.append({"case": f"mask {numel}", "bits": 1, "metadata": "-", "group_size": "-", "stochastic": "-",
                     "triton_equals_reference": ok, "dequantize_equal": back, "reference_gpu_equals_cpu": "-",
                     "exact_groups": 0})
        # The fused mask ops against their PyTorch expressions. A GPU writes every NaN an arithmetic op makes
        # as 0x7fffffff where the CPU keeps its input's payload, so the scaled gradient is compared bit for
        # bit with the expression on the same device, and by value (NaN equal to NaN, zeros' signs equal)
        # with the expression on the CPU.
        x_cpu = torch.randn(numel, generator=g)
        x_cpu[0] = float("nan")
        x_cpu[-1] = -0.0
        x = x_cpu.to(device)
        scaled = triton_kernels.scale_by_mask_triton(bits, x, 1 / 0.9, 0.0, torch.empty_like(x))
        on_device = torch.where(mask_cpu.to(device), x * (1 / 0.9), x * 0.0)
        on_cpu = torch.where(mask_cpu, x_cpu * (1 / 0.9), x_cpu * 0.0)
        cases = {
            "pack_greater": same(triton_kernels.pack_greater_triton(x, 0.1, False), masks.pack_mask_ref(x_cpu > 0.1)),
            "keep_bits": same(triton_kernels.keep_bits_triton(numel, 0.1, SEED, device),
                              masks.pack_mask_ref(uniform_noise(numel, SEED) >= 0.1)),
            "scale_by_mask": torch.equal(scaled.view(torch.int32), on_device.view(torch.int32)),
        }
        scaled = scaled.cpu()
        by_value = same(scaled, on_cpu) and torch.equal(scaled.signbit() | scaled.isnan(), on_cpu.signbit() | on_cpu.isnan())
        for op, ok in cases.items():
            rows.append({"case": f"{op} {numel}", "bits": 1, "metadata": "-", "group_size": "-", "stochastic": "-",
                         "triton_equals_reference": ok, "dequantize_equal": "-",
                         "reference_gpu_equals_cpu": by_value if op == "scale_by_mask" else "-", "exact_groups": 0})
    return rows


def check_fast_launch(device: torch.device, numel: int = 1 << 20, calls: int = 6) -> list[dict]:
    """Codes and dequantized values from launches that `triton_kernels._FastLaunch` sent straight to the
    compiled kernel, against the reference: each configuration is quantized ``calls`` times (the exact-group
    word's pointer is 16-byte aligned for one call in 4, and alignment is part of the key), and the launches
    that went through Triton's own path are counted apart. A configuration passes only if some launches
    were direct."""
    kernels = triton_kernels._get_kernels()
    fast = [k for k in kernels if isinstance(k, triton_kernels._FastLaunch)]
    counted = {"slow": 0}

    class Counting:  # stands in for a kernel's JITFunction: Triton's path only
        def __init__(self, jit):
            self.jit = jit

        def __getitem__(self, grid):
            counted["slow"] += 1
            return self.jit[grid]

    originals = [k.jit for k in fast]
    for k in fast:
        k.jit = Counting(k.jit)
    rows = []
    try:
        x = torch.randn(numel, device=device)
        x[7] = float("nan")  # one exact group
        for bits, group_size, md in ((1, 256, "fp16"), (2, 256, "fp16"), (4, 32, "bf16"), (8, 256, "fp32"),
                                     (2, "row", "fp16")):
            config = CompressionConfig(bits=bits, group_size=group_size, metadata_dtype=md)
            xs = x.view(1024, -1) if group_size == "row" else x
            ref = quantize_ref(xs, config, SEED)
            want = dequantize_ref(ref)
            before = counted["slow"]
            ok = True
            for _ in range(calls):
                packed = triton_kernels.quantize_triton(xs, config, SEED, defer_exact=True).resolve()
                ok = ok and same_packed(packed, ref) and same(triton_kernels.dequantize_triton(packed), want)
            launches = 2 * calls
            direct = launches - (counted["slow"] - before)
            rows.append({"case": f"{bits}-bit G={group_size} {md}", "launches": launches, "direct": direct,
                         "equal_reference": ok and direct > 0})
    finally:
        for k, jit in zip(fast, originals):
            k.jit = jit
    return rows


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


# Launch settings the sweep tries: (elements per program, warps, 32-bit word stores).
SWEEP_SETTINGS = [(tile, warps, words) for words in (False, True) for tile in (2048, 4096, 8192)
                  for warps in (4, 8)]


def sweep_quantize(device: torch.device, numel: int, repeats: int, group_size: int = 256) -> list[dict]:
    """Quantize kernel time (CUDA events, back to back) per bit width and launch setting, as % of a copy.

    Each setting's codes are checked against the reference on the same tensor (a setting that is fast but
    wrong must not be picked)."""
    x = torch.randn(numel, device=device)
    clone_device = device_time(x.clone, device, repeats)
    rows = []
    for bits in (1, 2, 4, 8):
        config = CompressionConfig(bits=bits, group_size=group_size)
        want = quantize_ref(x, config, SEED).codes
        for setting in SWEEP_SETTINGS:
            codes = triton_kernels.launch_quantize(x, config, SEED, group_size, tuning=setting)[0]
            t = device_time(lambda: triton_kernels.launch_quantize(x, config, SEED, group_size, tuning=setting),
                            device, repeats)
            rows.append({"bits": bits, "tile": setting[0], "warps": setting[1], "stores": "word" if setting[2] else "byte",
                         "device_percent_of_copy": 100.0 * clone_device / t if t else None,
                         "us": 1e6 * t if t else None, "codes_equal_reference_64M": torch.equal(codes, want)})
        del want
    return rows


def host_call_seconds(fn: Callable[[], object], device: torch.device, calls: int = 200) -> float:
    """Median host wall seconds per call of ``fn`` with the device idle before each call and not waited for
    after it: the cost of issuing the call (Python, launches, and any sync the call makes itself)."""
    fn()
    times = []
    for _ in range(calls):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return statistics.median(times)


def _own_launch_path(fn, *args):
    """``fn(*args)`` with every kernel launched through Triton's ``JITFunction.run`` instead of
    `triton_kernels._FastLaunch`. The swap is timed with it: ~1 us on the 2-core development machine."""
    kernels = triton_kernels._get_kernels()
    triton_kernels._kernels = type(kernels)(*(getattr(k, "jit", k) for k in kernels))
    try:
        return fn(*args)
    finally:
        triton_kernels._kernels = kernels


def check_host_overhead(device: torch.device, calls: int, shape: tuple[int, int] = (1024, 64)) -> list[dict]:
    """Host cost of each layer of a compressed save / load on one small activation, next to plain torch
    calls: where a host-bound step's time goes."""
    from tinykg.compress import dequantize, masks, quantize, uniform_noise
    from tinykg.compress.packed import gather_exact
    from tinykg.nn import _saved

    config = CompressionConfig(bits=2, backend="triton")
    x = torch.randn(shape, device=device)
    w = torch.randn(shape, device=device, requires_grad=True)
    group_size = 256
    flat = x.reshape(-1)
    packed = triton_kernels.quantize_triton(x, config, SEED)
    flags = torch.zeros(flat.numel() // group_size, dtype=torch.uint8, device=device)
    mask = x > 0
    bitmask = _saved.BitMask.pack(mask)
    cases = {
        "x.clone()": x.clone,
        "x * 2 (one torch op)": lambda: x * 2,
        "torch.empty(4096, uint8)": lambda: torch.empty(4096, dtype=torch.uint8, device=device),
        "launch_quantize (Triton launch + 4 allocations)": lambda: triton_kernels.launch_quantize(flat, config, SEED, group_size),
        "gather_exact (any + sync, no exact group)": lambda: gather_exact(flags, flat, group_size),
        "quantize_triton (backend call)": lambda: triton_kernels.quantize_triton(x, config, SEED),
        "quantize_triton (deferred check)": lambda: triton_kernels.quantize_triton(x, config, SEED, defer_exact=True),
        "quantize (public: seed draw, dispatch)": lambda: quantize(x, config),
        "maybe_quantize (fresh intermediate)": lambda: _saved.maybe_quantize(w * 1.0, config),
        "launch_dequantize": lambda: triton_kernels.launch_dequantize(packed),
        "launch_dequantize (Triton's own launch path)": lambda: _own_launch_path(triton_kernels.launch_dequantize, packed),
        "launch_quantize (Triton's own launch path)":
            lambda: _own_launch_path(triton_kernels.launch_quantize, flat, config, SEED, group_size),
        "dequantize (public)": lambda: dequantize(packed, config),
        "BitMask.pack": lambda: _saved.BitMask.pack(mask),
        "BitMask.unpack": bitmask.unpack,
        # The mask path before session 8 (the reference: 4 torch calls to pack, 6 to unpack), against the
        # Triton launches BitMask takes on CUDA now: which is cheaper for the host was not measured.
        "pack_mask_ref (torch calls)": lambda: masks.pack_mask_ref(mask),
        "unpack_mask_ref (torch calls)": lambda: masks.unpack_mask_ref(bitmask.bits, bitmask.shape),
        # The fused mask ops (session 13, one Triton launch each) against the PyTorch expressions that
        # specify them, and F.dropout (the fp32 baseline's dropout).
        "BitMask.greater (ReLU sign)": lambda: _saved.BitMask.greater(x),
        "pack_mask(x > 0) (expression)": lambda: masks.pack_mask(x > 0),
        "BitMask.keep (dropout mask)": lambda: _saved.BitMask.keep(x.shape, 0.1, SEED, device),
        "pack_mask(uniform_noise >= p) (expression)": lambda: masks.pack_mask(uniform_noise(x.numel(), SEED, device) >= 0.1),
        "F.dropout": lambda: torch.nn.functional.dropout(x, 0.1),
        "BitMask.scale (masked gradient)": lambda: bitmask.scale(x, 1.0, 0.2),
        "torch.where(unpack, g, g * s) (expression)": lambda: torch.where(bitmask.unpack(), x, x * 0.2),
    }
    return [{"what": name, "host_us": 1e6 * host_call_seconds(fn, device, calls), "shape": str(shape)}
            for name, fn in cases.items()]


# --------------------------------------------------------------------------------------------------------
# 3. HOOK: model step-time overhead. ``make_step(config)`` returns a zero-argument callable that runs one
# full training step (forward, backward, optimizer) of a freshly built model, compressed with ``config``
# or uncompressed when ``config`` is None. Register steps in MODEL_STEPS, e.g. {"KGCN": make_kgcn_step}.

MakeStep = Callable[[CompressionConfig | None], Callable[[], None]]
# Where the step makers put models and batches (the tests build them on "cpu").
STEP_DEVICE = "cuda"


def make_ctr_step(model_name: str, overrides: dict, batch_size: int, synthetic_triples: int | None = None) -> MakeStep:
    """A training step of a CTR model on the synthetic dataset (the GPU machine has no copy of ../shared)."""

    def make(config: CompressionConfig | None) -> Callable[[], None]:
        from tinykg.data import ctr_split
        from tinykg.train.builders import build_ctr_model

        dataset = _synthetic(synthetic_triples)
        train, _, _ = ctr_split(dataset.interactions, seed=0)
        torch.manual_seed(0)
        model = build_ctr_model(model_name, dataset, train, compression=config, seed=0, overrides=overrides).to(STEP_DEVICE)
        model.train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        g = torch.Generator().manual_seed(0)
        rows = torch.randint(0, len(train), (batch_size,), generator=g)
        batch = [torch.as_tensor(a[rows.numpy()]).to(STEP_DEVICE) for a in (train.user_index, train.item_index, train.label)]
        batch[2] = batch[2].float()

        def step() -> None:
            loss = model.loss(*batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        step.model, step.batch = model, tuple(batch)
        return step

    return make


def make_topk_step(model_name: str, batch_size: int | None = None, synthetic_triples: int | None = None) -> MakeStep:
    """A BPR training step of a top-K model (KGAT / KGIN / BPR-MF) on the synthetic dataset, its published
    synthetic settings, the first batch of (user, positive, negative)."""

    def make(config: CompressionConfig | None) -> Callable[[], None]:
        from tinykg.train.topk import build_topk_model, first_batch, topk_dataset_key, topk_hyperparameters, topk_split_for

        dataset = _synthetic(synthetic_triples)
        key = topk_dataset_key(dataset.name)
        params = topk_hyperparameters(model_name, key)
        train, _, _ = topk_split_for(dataset, key, seed=0)
        torch.manual_seed(0)
        model, _ = build_topk_model(model_name, dataset, train, compression=config, params=params)
        model = model.to(STEP_DEVICE).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        batch = first_batch(train, batch_size or params["batch_size"], seed=0, device=STEP_DEVICE)

        def step() -> None:
            loss = model.loss(*batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        step.model, step.batch = model, batch
        return step

    return make


# Small steps for --smoke --count-ops (the interpreter runs every launch in numpy).
SMOKE_STEPS: dict[str, MakeStep] = {
    "KGCN d16 H2 K8 B256": make_ctr_step("kgcn", {}, 256),
    "KGAT synthetic default (B256)": make_topk_step("kgat", batch_size=256),
}

_DATASETS: dict = {}


def _synthetic(triples: int | None):
    """The synthetic default (or a graph of about ``triples`` KG triples), generated once per process."""
    from tinykg.train.run import load_or_generate

    key = triples or "default"
    if key not in _DATASETS:
        _DATASETS[key] = load_or_generate(None, synthetic_size=key)
    return _DATASETS[key]


MODEL_STEPS: dict[str, MakeStep] = {
    "KGCN d16 H2 K8 B8192": make_ctr_step("kgcn", {}, 8192),
    "KGCN d64 H3 K8 B4096 (Book-Crossing sizes)": make_ctr_step("kgcn", {"embedding_dim": 64, "num_layers": 3}, 4096),
    "KGNN-LS d64 H2 K8 B4096": make_ctr_step("kgnn-ls", {"embedding_dim": 64, "num_layers": 2}, 4096),
    "RippleNet d16 H2 M32 B8192": make_ctr_step("ripplenet", {}, 8192),
    "CKAN d64 L2 B4096": make_ctr_step("ckan", {"embedding_dim": 64}, 4096),
    "KGAT synthetic default (B1024)": make_topk_step("kgat"),
    "KGAT ~1M triples (B1024)": make_topk_step("kgat", synthetic_triples=1_000_000),
    "KGAT ~4M triples (B1024)": make_topk_step("kgat", synthetic_triples=4_000_000),
    "KGIN synthetic default": make_topk_step("kgin"),
    "KGIN ~1M triples": make_topk_step("kgin", synthetic_triples=1_000_000),
}


def _warmed_steps(make_step: MakeStep, bits: int):
    """(label, step) for the fp32 step and then the compressed one, each run 3 times, the device idle."""
    for label, config in (("fp32", None), (f"{bits}-bit", CompressionConfig(bits=bits, backend="triton"))):
        step = make_step(config)
        for _ in range(3):
            step()
        torch.cuda.synchronize()
        yield label, step


def profile_step(name: str, make_step: MakeStep, *, bits: int = 2, steps: int = 3, top: int = 12) -> str:
    """torch.profiler tables (top ops by device time and by host time) of ``steps`` fp32 and compressed
    steps after warm-up, as markdown-ish text."""
    from torch.profiler import ProfilerActivity, profile

    parts = []
    for label, step in _warmed_steps(make_step, bits):
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(steps):
                step()
            torch.cuda.synchronize()
        table = prof.key_averages()
        for sort in ("self_cuda_time_total", "self_cpu_time_total"):
            parts.append(f"### {name}, {label}, {steps} steps, top {top} by {sort}\n\n"
                         + table.table(sort_by=sort, row_limit=top, max_name_column_width=60))
    return "\n".join(parts)


def host_profile_step(name: str, make_step: MakeStep, *, bits: int = 2, steps: int = 20, top: int = 30) -> str:
    """cProfile of the host's Python while it issues ``steps`` fp32 and compressed steps after warm-up (a sync
    after each, which shows as its own row): which Python functions the compressed step's extra host time
    is spent in, where torch.profiler sees only the ops."""
    import cProfile
    import io
    import pstats

    parts = []
    for label, step in _warmed_steps(make_step, bits):
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(steps):
            step()
            torch.cuda.synchronize()
        profiler.disable()
        for sort in ("tottime", "cumulative"):
            text = io.StringIO()
            pstats.Stats(profiler, stream=text).sort_stats(sort).print_stats(top)
            parts.append(f"### {name}, {label}, {steps} steps, top {top} by {sort}\n\n" + text.getvalue())
    return "\n".join(parts)


class _OpCounter:
    """Torch ops dispatched while active (a GPU host pays ~10 us for each, a view a few), Triton kernel
    launches counted apart. Under the interpreter a launch runs torch ops of its own: those are not counted."""

    VIEWS = frozenset({"view", "_unsafe_view", "reshape", "expand", "unsqueeze", "squeeze", "t", "transpose",
                       "permute", "select", "slice", "alias", "detach", "as_strided", "unbind", "split", "narrow"})

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        counter = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                if not counter.paused:
                    counter.ops[func.overloadpacket.__name__] = counter.ops.get(func.overloadpacket.__name__, 0) + 1
                return func(*args, **(kwargs or {}))

        self.mode = Mode()
        self.ops: dict[str, int] = {}
        self.launches = 0
        self.paused = 0

    def wrap(self, kernel):
        counter = self

        class Counted:
            def __getitem__(self, grid):
                launch = kernel[grid]

                def run(*args, **kwargs):
                    counter.launches += 1
                    counter.paused += 1
                    try:
                        return launch(*args, **kwargs)
                    finally:
                        counter.paused -= 1

                return run

        return Counted()

    def summary(self) -> dict:
        views = sum(n for name, n in self.ops.items() if name in self.VIEWS)
        total = sum(self.ops.values())
        return {"torch_ops": total, "views": views, "other_ops": total - views, "triton_launches": self.launches}


@restoring_quantizer_seed()
def count_step_ops(name: str, make_step: MakeStep, *, bits: int = 2, device: torch.device | str = "cuda") -> dict:
    """Torch ops dispatched and Triton launches in one training step, fp32 and compressed (Triton backend).

    On a GPU this counts what the step really issues. On CPU tensors under ``TRITON_INTERPRET=1`` it counts
    the GPU's code path: compressed tensors and masks are routed to the Triton kernels as on CUDA (the CPU
    path otherwise takes numba and numpy).
    """
    import importlib

    from tinykg.compress import masks
    from tinykg.compress.config import Backend

    quantize_module = importlib.import_module("tinykg.compress.quantize")  # the package re-exports a function by that name

    device = torch.device(device)
    seed_quantizer(0)  # as the training loops: the per-tensor seeds cost no torch call
    counter = _OpCounter()
    real_get, real_masks = triton_kernels._get_kernels, masks._CHOSEN.get(device)
    real_order = quantize_module.AUTO_ORDER.get(device.type)
    try:
        counted = triton_kernels.Kernels(*map(counter.wrap, real_get()))
        triton_kernels._get_kernels = lambda: counted
        masks._CHOSEN[device] = masks._Impl(triton_kernels.pack_mask_triton, triton_kernels.unpack_mask_triton, "triton")
        quantize_module.AUTO_ORDER[device.type] = (Backend.TRITON,)
        quantize_module._resolved.clear()
        row = {"model": name, "bits": bits}
        for label, config in (("fp32", None), (f"{bits}-bit", CompressionConfig(bits=bits, backend="triton"))):
            step = make_step(config)
            step()
            step()  # warm: compiled kernels, cached plans and adjacency
            counter.ops, counter.launches = {}, 0
            with counter.mode:
                step()
            row.update({f"{label}_{k}": v for k, v in counter.summary().items()})
        return row
    finally:
        triton_kernels._get_kernels = real_get
        if real_masks is None:
            masks._CHOSEN.pop(device, None)
        else:
            masks._CHOSEN[device] = real_masks
        if real_order is None:
            quantize_module.AUTO_ORDER.pop(device.type, None)
        else:
            quantize_module.AUTO_ORDER[device.type] = real_order
        quantize_module._resolved.clear()


def _no_wait(signal) -> bool:
    """Diagnostic stand-in for `triton_kernels._Signal.wait_any`: answers "no exact group" without waiting
    for the kernel. The step time it gives bounds what any cheaper exact-group check could gain. Not
    correct for tensors with exact groups; used only for timing."""
    return False


@restoring_quantizer_seed()
def measure_graphed_steps(name: str, make_step: MakeStep, *, bits: int = 2, repeats: int = 20,
                          device: torch.device | str = "cuda") -> dict:
    """Step time of the fp32 and the compressed step as ``tinykg train --cuda-graph`` runs them
    (`tinykg.train.graphed.GraphedStep`: captured after 3 eager steps, replayed with new quantization
    noise, exact groups checked after each replay), and of the same eager steps, each pair timed side by
    side (interleaved, a sync after every step, as the training loops' ``loss.item()`` does)."""
    from tinykg.train.graphed import GraphedStep

    seed_quantizer(0)
    row: dict = {"model": name, "bits": bits}
    graphed, eager = {}, {}
    alive = []  # each graph replays into its model's, batch's and optimizer's memory: all kept to the end
    try:
        for label, config in (("fp32", None), (f"{bits}-bit", CompressionConfig(bits=bits, backend="triton"))):
            eager[label] = make_step(config)
            step = make_step(config)
            optimizer = torch.optim.Adam(step.model.parameters(), lr=1e-4, capturable=True)
            graph_step = GraphedStep(step.model.loss, optimizer, name=f"{name} {label} step")
            batch = step.batch

            def replay(graph_step=graph_step, batch=batch) -> None:
                graph_step(*batch)

            for _ in range(graph_step.warmup + 1):  # the eager warm-up steps, then the capture
                replay()
            graphed[label] = replay
            alive.append((graph_step, step, optimizer))
        compressed = f"{bits}-bit"
        ratio, t_compressed, t_plain = time_ratio(graphed[compressed], graphed["fp32"], repeats=repeats, warmup=3,
                                                  device=device)
        eager_ratio, e_compressed, e_plain = time_ratio(eager[compressed], eager["fp32"], repeats=repeats, warmup=3,
                                                        device=device)
        for graph_step, _, _ in alive:
            graph_step.check()
        row.update({"graph_step_ratio": ratio, "fp32_graph_ms": 1e3 * t_plain, "compressed_graph_ms": 1e3 * t_compressed,
                    "eager_step_ratio": eager_ratio, "fp32_eager_ms": 1e3 * e_plain,
                    "compressed_eager_ms": 1e3 * e_compressed,
                    # What a user gains turning both on: the 2-bit graphed step against fp32's eager one.
                    "graph_2bit_over_eager_fp32": t_compressed / e_plain})
    except Exception as err:  # capture refuses some op: say which, keep the other models' rows
        row["error"] = f"{type(err).__name__}: {str(err)[:300]}"
    return row


@restoring_quantizer_seed()
def measure_step_overhead(name: str, make_step: MakeStep, *, bits: int = 2, repeats: int = 20,
                          warmup: int = 3, device: torch.device | str = "cuda", sync_diagnostic: bool = True) -> dict:
    """Step time of the compressed model over the fp32 one (same run, interleaved), peak memory of each, the
    exact bytes each holds for backward, host CPU time per step, and (``sync_diagnostic``) the compressed
    step's time when the host never waits for the exact-group answer. Quantization seeds come from the
    quantizer's own stream, as in the training loops."""
    from tinykg.train.loop import measure_step_activation

    seed_quantizer(0)

    config = CompressionConfig(bits=bits, backend="triton")
    plain, compressed = make_step(None), make_step(config)
    peaks, saved = {}, {}
    for label, step in (("fp32", plain), (f"{bits}-bit", compressed)):
        step()
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        peaks[label] = torch.cuda.max_memory_allocated(device) - base
        model = getattr(step, "model", None)
        saved[label] = (measure_step_activation(model, step.batch, exclude=step.batch).total_bytes
                        if model is not None else None)
    ratio, t_compressed, t_plain = time_ratio(compressed, plain, repeats=repeats, warmup=warmup, device=device)
    row = {"model": name, "bits": bits, "step_ratio": ratio, "overhead_percent": 100.0 * (ratio - 1),
           "fp32_step_ms": 1e3 * t_plain, "compressed_step_ms": 1e3 * t_compressed,
           # Host time to issue one step from an idle device: close to the step time = bound by the host.
           "fp32_enqueue_ms": 1e3 * host_call_seconds(plain, torch.device(device), max(3, repeats // 2)),
           "compressed_enqueue_ms": 1e3 * host_call_seconds(compressed, torch.device(device), max(3, repeats // 2)),
           "fp32_peak_MiB": peaks["fp32"] / 2**20, "compressed_peak_MiB": peaks[f"{bits}-bit"] / 2**20,
           "peak_reduction": peaks["fp32"] / max(peaks[f"{bits}-bit"], 1),
           "fp32_saved_MiB": saved["fp32"] / 2**20 if saved["fp32"] is not None else None,
           "compressed_saved_MiB": saved[f"{bits}-bit"] / 2**20 if saved[f"{bits}-bit"] is not None else None,
           "no_wait_step_ratio": None}
    if sync_diagnostic:
        real = triton_kernels._Signal.wait_any
        triton_kernels._Signal.wait_any = _no_wait
        try:
            row["no_wait_step_ratio"] = time_ratio(compressed, plain, repeats=repeats, warmup=warmup, device=device)[0]
        finally:
            triton_kernels._Signal.wait_any = real
    return row


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
    parser.add_argument("--sweep", action="store_true",
                        help="also time the quantize kernel under every launch setting in SWEEP_SETTINGS")
    parser.add_argument("--steps", nargs="*", default=None,
                        help="only the MODEL_STEPS whose name contains one of these strings (default: all)")
    parser.add_argument("--step-repeats", type=int, default=None, help="timed steps per model (default --repeats)")
    parser.add_argument("--skip-correctness", action="store_true", help="skip section 1 (already checked)")
    parser.add_argument("--host-overhead", action="store_true",
                        help="also time the host cost of each layer of a compressed save / load (small tensor)")
    parser.add_argument("--profile", action="store_true",
                        help="torch.profiler tables of the selected --steps instead of timing them")
    parser.add_argument("--cuda-graph", action="store_true",
                        help="time the selected --steps as `tinykg train --cuda-graph` runs them (captured whole "
                             "in a CUDA graph, replayed), fp32 and compressed, next to the eager steps")
    parser.add_argument("--skip-no-wait", action="store_true",
                        help="time the model steps without the never-wait diagnostic (half the step timing)")
    parser.add_argument("--host-profile", action="store_true",
                        help="cProfile tables of the host's Python for the selected --steps instead of timing them")
    parser.add_argument("--count-ops", action="store_true",
                        help="count the torch ops and Triton launches of one step of the selected --steps, fp32 vs "
                             "2-bit (on CPU under TRITON_INTERPRET=1: the GPU's code path)")
    parser.add_argument("--device-chunks", type=int, nargs="+", default=None, metavar="N",
                        help="time the model steps once per N with the gather / scatter ops' temporaries in chunks "
                             "of N elements on the GPU (tinykg.nn._chunks.DEVICE_CHUNK_ELEMENTS; 0 = one piece), to "
                             "read each N's allocator peak and step time against one piece")
    args = parser.parse_args(argv)
    if args.device_chunks and any(n < 0 for n in args.device_chunks):
        parser.error("--device-chunks takes element counts >= 0 (0 = one piece)")

    start = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    info = environment(device)
    print("# tinykg GPU check (Triton backend)\n")
    print(", ".join(f"{k}={v}" for k, v in info.items()), "\n")
    if not triton_kernels.available(device):
        print("Triton backend unavailable on", device, "(no GPU, triton missing, or TRITON_INTERPRET unset)")
        return 2
    report: dict = {"environment": info}
    out = args.out or (os.path.join(os.environ["OUT"], "gpu_check.json") if os.environ.get("OUT") else None)

    def save() -> None:  # after every section, so a run cut short still leaves what it measured
        if out:
            Path(out).write_text(json.dumps(report, indent=2, default=str))

    t0 = time.perf_counter()
    correctness = [] if args.skip_correctness else check_correctness(device, args.smoke)
    report["correctness"] = correctness
    print(f"## Correctness: Triton vs quantize_ref on CPU, same seed ({time.perf_counter() - t0:.0f} s)\n")
    print(markdown_table(correctness, ["case", "bits", "metadata", "group_size", "stochastic", "exact_groups",
                                       "triton_equals_reference", "dequantize_equal",
                                       "reference_gpu_equals_cpu"]), "\n")
    save()

    if any(isinstance(k, triton_kernels._FastLaunch) for k in triton_kernels._get_kernels()):
        fast = check_fast_launch(device, 4096 if args.smoke else 1 << 20)
        report["fast_launch"] = fast
        print("## Direct launches (`_FastLaunch`) against the reference (launches = quantize + dequantize; "
              "direct = those that skipped Triton's own path)\n")
        print(markdown_table(fast, ["case", "launches", "direct", "equal_reference"]), "\n")
        save()

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
    save()

    if args.sweep:
        t0 = time.perf_counter()
        sweep = sweep_quantize(device, numel, 3 if args.smoke else args.repeats)
        report["quantize_sweep"] = sweep
        print(f"## Quantize launch settings ({time.perf_counter() - t0:.0f} s): kernel time from CUDA events, "
              "% of a device-to-device copy of the same tensor\n")
        print(markdown_table(sweep, ["bits", "tile", "warps", "stores", "device_percent_of_copy", "us",
                                     "codes_equal_reference_64M"]), "\n")
        save()

    if args.host_overhead:
        host = check_host_overhead(device, 20 if args.smoke else 200)
        report["host_overhead"] = host
        print("## Host cost per call, device idle before it and not waited for after it (median)\n")
        print(markdown_table(host, ["what", "shape", "host_us"]), "\n")
        save()

    if args.count_ops:
        global STEP_DEVICE
        STEP_DEVICE = device.type
        chosen = SMOKE_STEPS if args.smoke else {
            n: m for n, m in MODEL_STEPS.items() if not args.steps or any(part in n for part in args.steps)}
        counts = [count_step_ops(n, m, device=device) for n, m in chosen.items()]
        report["step_ops"] = counts
        print("## Torch ops dispatched and Triton launches per training step (views: ops that launch nothing)\n")
        print(markdown_table(counts, ["model", "bits", "fp32_torch_ops", "fp32_views", "2-bit_torch_ops", "2-bit_views",
                                      "2-bit_triton_launches"]), "\n")
        save()

    steps = []
    budgets = args.device_chunks or [None]
    original_budget = _chunks.DEVICE_CHUNK_ELEMENTS
    chosen_steps = [] if args.smoke or device.type != "cuda" else [
        (budget, name, make_step) for budget in budgets for name, make_step in MODEL_STEPS.items()
        if not args.steps or any(part in name for part in args.steps)]
    for budget, name, make_step in chosen_steps:
        _chunks.DEVICE_CHUNK_ELEMENTS = original_budget if budget is None else (budget or None)
        try:
            if args.profile or args.host_profile:
                print((profile_step if args.profile else host_profile_step)(name, make_step), flush=True)
                continue
            if args.cuda_graph:
                graphed = measure_graphed_steps(name, make_step, device=device,
                                                repeats=args.step_repeats or args.repeats)
                report.setdefault("graphed_steps", []).append(graphed)
                print(graphed, flush=True)
                save()
                continue
            try:
                steps.append(measure_step_overhead(name, make_step, device=device,
                                                   repeats=args.step_repeats or args.repeats,
                                                   sync_diagnostic=not args.skip_no_wait))
                steps[-1]["device_chunks"] = _chunks.DEVICE_CHUNK_ELEMENTS or "one piece"
                print(steps[-1], flush=True)
            except Exception as err:  # one model failing must not hide the others' numbers
                print(f"model step {name} failed: {type(err).__name__}: {err}")
            report["model_steps"] = steps
            save()
        finally:
            _chunks.DEVICE_CHUNK_ELEMENTS = original_budget
    report["model_steps"] = steps
    print("## Model step time (hook: MODEL_STEPS / measure_step_overhead)\n")
    if steps:
        print("enqueue_ms = host wall time to issue one step from an idle device, not waiting for it at the end: "
              "close to the step time means the step is bound by Python, launches and syncs, not by the GPU's "
              "work. no_wait_step_ratio = the step "
              "ratio when the host never waits for the exact-group answer (timing diagnostic only; since "
              "session 9 the kernel writes that answer to pinned host memory, read when the copy is saved). peak = "
              "max_memory_allocated during one step above what was allocated before it; saved = exact bytes "
              "held for backward (ActivationTracker)\n")
        print(markdown_table(steps, ["model", "device_chunks", "bits", "step_ratio", "overhead_percent", "fp32_step_ms",
                                     "compressed_step_ms", "fp32_enqueue_ms", "compressed_enqueue_ms",
                                     "no_wait_step_ratio", "fp32_peak_MiB", "compressed_peak_MiB",
                                     "peak_reduction", "fp32_saved_MiB", "compressed_saved_MiB"]), "\n")
    else:
        print("no model steps registered yet\n")
    if report.get("graphed_steps"):
        columns = ["model", "bits", "graph_step_ratio", "fp32_graph_ms", "compressed_graph_ms", "eager_step_ratio",
                   "fp32_eager_ms", "compressed_eager_ms", "graph_2bit_over_eager_fp32", "error"]
        print("## Steps as `tinykg train --cuda-graph` runs them (GraphedStep: new noise per replay, exact groups "
              "checked), next to the eager steps; graph_step_ratio and eager_step_ratio each from one interleaved "
              "run; graph_2bit_over_eager_fp32 divides times of those two runs\n")
        print(markdown_table([{c: r.get(c) for c in columns} for r in report["graphed_steps"]], columns), "\n")

    ok = all(r["triton_equals_reference"] and r["dequantize_equal"] for r in correctness)
    ok = ok and all(r["codes_equal_reference_64M"] for r in throughput)
    ok = ok and all(r["equal_reference"] for r in report.get("fast_launch", []))
    ok = ok and all(r["reference_gpu_equals_cpu"] is not False for r in correctness)
    ok = ok and all(r["codes_equal_reference_64M"] for r in report.get("quantize_sweep", []))
    report["all_correct"] = ok
    report["seconds"] = time.perf_counter() - start
    print(f"all correct: {ok}; {report['seconds']:.0f} s")
    save()
    if out:
        print("wrote", out)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
