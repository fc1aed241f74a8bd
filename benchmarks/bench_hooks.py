"""Is `compress_saved_tensors` unbiased on plain PyTorch models? The mean of N compressed gradients
against the fp32 gradient, with and without the save policies (`tinykg.compress.hooks.SAVE_POLICIES`).

    python benchmarks/bench_hooks.py                      # MLP with ReLU / LeakyReLU, a Transformer layer
    python benchmarks/bench_hooks.py --smoke              # few seeds (run by the tests)
    python benchmarks/bench_hooks.py --models mlp-tanh mlp-sigmoid   # the second-order bias that remains

Per model, width and policy setting, over seeds 0..N-1 (each seed draws other rounding noise):

* ``one seed``: mean over seeds of ||g_seed - g_fp32|| / ||g_fp32||, the error of one step's gradient;
* ``mean of N``: ||mean_seed g_seed - g_fp32|| / ||g_fp32||;
* ``noise only``: what ``mean of N`` would be for an unbiased estimator with this spread,
  sqrt(sum of per-entry variances / N) / ||g_fp32||;
* ``z``: ``mean of N`` / ``noise only``. An unbiased gradient gives z of about 1; z well above 3 is bias.

``policies off`` clears `SAVE_POLICIES` for the run, which is what the hooks did before they had them:
every saved float tensor quantized, including what ReLU's and LeakyReLU's backward reads as ``x > 0``.
The gradient reported is the first layer's weight (the MLPs) or the attention's input projection and the
first feed-forward weight (the Transformer layer).

Tanh and sigmoid have no policy: their backward reads the saved output y through 1 - y**2 and y (1 - y),
and for a stochastically rounded y, E[y_q**2] = y**2 + Var(y_q). No function of one rounded copy is
unbiased for y**2, so a bias of the order of the rounding variance remains (``mlp-tanh``, ``mlp-sigmoid``).
"""

from __future__ import annotations

import argparse
import contextlib
import sys

import torch
from torch import nn

from tinykg.compress import CompressionConfig, compress_saved_tensors
from tinykg.compress import hooks


def _mlp(activation: nn.Module):
    def build():
        model = nn.Sequential(nn.Linear(16, 64), activation, nn.Linear(64, 1))
        x = torch.randn(256, 16)
        return model, lambda: model(x).pow(2).mean(), {"0.weight": model[0].weight}

    return build


def _transformer():
    layer = nn.TransformerEncoderLayer(32, 2, 64, dropout=0.0, batch_first=True)
    x = torch.randn(16, 128, 32)
    # A random projection of the output: mean(out^2) of a final LayerNorm is constant at initialisation,
    # so its gradient is zero and a relative error against it is meaningless.
    w = torch.randn(16, 128, 32)
    return layer, lambda: (layer(x) * w).sum(), {
        "in_proj": layer.self_attn.in_proj_weight, "linear1": layer.linear1.weight}


MODELS = {"mlp-relu": _mlp(nn.ReLU()), "mlp-leaky-relu": _mlp(nn.LeakyReLU(0.1)), "transformer-layer": _transformer,
          "mlp-tanh": _mlp(nn.Tanh()), "mlp-sigmoid": _mlp(nn.Sigmoid())}


@contextlib.contextmanager
def policies(enabled: bool):
    saved = dict(hooks.SAVE_POLICIES)
    if not enabled:
        hooks.SAVE_POLICIES.clear()
    try:
        yield
    finally:
        hooks.SAVE_POLICIES.clear()
        hooks.SAVE_POLICIES.update(saved)


def gradients(model, loss_fn, params: dict, config: CompressionConfig | None, seed: int) -> dict:
    model.zero_grad()
    torch.manual_seed(seed)
    with compress_saved_tensors(config) if config is not None else contextlib.nullcontext():
        loss = loss_fn()
    loss.backward()
    return {name: p.grad.detach().clone() for name, p in params.items()}


def measure(name: str, bits: int, seeds: int, enabled: bool) -> list[dict]:
    torch.manual_seed(0)
    model, loss_fn, params = MODELS[name]()
    reference = gradients(model, loss_fn, params, None, 0)
    config = CompressionConfig(bits=bits)
    with policies(enabled):
        samples = [gradients(model, loss_fn, params, config, seed) for seed in range(seeds)]
    rows = []
    for param, ref in reference.items():
        stack = torch.stack([s[param] for s in samples])
        norm = ref.norm().item()
        one = sum((g - ref).norm().item() for g in stack) / seeds / norm
        mean = (stack.mean(0) - ref).norm().item() / norm
        noise = (stack.var(0).sum() / seeds).sqrt().item() / norm
        rows.append({"model": name, "gradient": param, "bits": bits, "policies": "on" if enabled else "off",
                     "seeds": seeds, "one_seed": one, "mean_of_n": mean, "noise_only": noise, "z": mean / noise})
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| model | gradient | bits | policies | seeds | one seed | mean of N | noise only | z |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['gradient']} | {r['bits']} | {r['policies']} | {r['seeds']} | "
                     f"{100 * r['one_seed']:.2f}% | {100 * r['mean_of_n']:.2f}% | {100 * r['noise_only']:.2f}% | "
                     f"{r['z']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="8 seeds, one model, 2 bits: checks the script runs")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--bits", type=int, nargs="+", default=[8, 2])
    parser.add_argument("--seeds", type=int, default=200, help="rounding-noise seeds per setting (default 200)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.models, args.bits, args.seeds = ["mlp-relu"], [2], 8
    rows = [row for name in args.models for bits in args.bits for enabled in (False, True)
            for row in measure(name, bits, args.seeds, enabled)]
    print(f"# bench_hooks: torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
