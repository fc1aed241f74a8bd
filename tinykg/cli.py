"""The ``tinykg`` command: ``tinykg train``, ``tinykg data info`` and ``tinykg bench``. Thin: parses, calls, reports."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from . import __version__

BITS_CHOICES = (32, 8, 4, 2, 1)
CTR_MODEL_NAMES = ("kgcn", "kgnn-ls", "ripplenet", "ckan")
TOPK_MODEL_NAMES = ("kgat", "kgin", "bprmf")
# ``tinykg bench NAME``: the script of benchmarks/ it runs (each has main(argv) and --smoke).
BENCH_SCRIPTS = {
    "models": "bench_models.py",
    "step": "bench_step.py",
    "kernels": "bench_kernels.py",
    "compress": "bench_compress.py",
    "alternatives": "bench_alternatives.py",
    "capacity": "bench_capacity.py",
    "fp32-cannot": "bench_fp32_cannot.py",
    "one-bit": "bench_one_bit.py",
    "kgat-pretrain": "bench_kgat_pretrain.py",
    "hooks": "bench_hooks.py",
    "grad-noise": "bench_grad_noise.py",
    "chunks": "bench_chunks.py",
    "plots": "plots.py",
}


def _group_size(text: str) -> int | str:
    if text == "row":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a power of two or 'row', got {text!r}") from None


# --set values a user may spell the Python or shell way; anything else is read as JSON, else kept as text.
_WORDS = {"none": None, "null": None, "true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}


def _override(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    if value.strip().lower() in _WORDS:
        return key, _WORDS[value.strip().lower()]
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _synthetic_size(text: str) -> str | int:
    if text in ("toy", "default"):
        return text
    try:
        value = int(float(text))
    except (ValueError, OverflowError):
        raise argparse.ArgumentTypeError(f"expected 'toy', 'default' or a number of triples, got {text!r}") from None
    if value < 100:
        raise argparse.ArgumentTypeError(f"synthetic size must be at least 100 triples, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, 2**32), got {text!r}")
    return value


_RATING_HELP = ("RecBole files with a rating column: rows rated at least X are positives (default 4, for 1-5 stars); "
                "'none': every row")


def _rating_threshold(text: str) -> float | None:
    if text.strip().lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'none', got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tinykg", description="Train KG recommenders with compressed activations.")
    parser.add_argument("--version", action="version", version=f"tinykg {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train and evaluate a model (default: KGCN on synthetic data, 2-bit)")
    train.add_argument("--model", default="kgcn", choices=CTR_MODEL_NAMES + TOPK_MODEL_NAMES, help="CTR models (AUC/F1) or full-graph top-K models (Recall/NDCG@20)")
    train.add_argument("--data", metavar="DIR", help="dataset directory (default: the built-in synthetic dataset)")
    train.add_argument("--synthetic", type=_synthetic_size, metavar="SIZE", help="without --data: synthetic size 'toy', 'default' (the default) or a number of KG triples")
    train.add_argument("--format", dest="fmt", choices=("kgcn", "lastfm-raw", "kgat", "recbole"), help="dataset format (default: detected)")
    train.add_argument("--rating-threshold", type=_rating_threshold, default=4.0, metavar="X", help=_RATING_HELP)
    train.add_argument("--bits", type=int, default=2, choices=BITS_CHOICES, help="activation storage bits; 32 = no compression (default 2)")
    train.add_argument(
        "--group-size", type=_group_size, default=None,
        help="elements per quantization group, or 'row' (default: the model's setting for the dataset, else 64 at --bits 1 and 256 otherwise)",
    )
    train.add_argument("--backend", default="auto", choices=("auto", "torch", "cpu", "triton"), help="quantizer implementation")
    train.add_argument("--epochs", type=_positive_int, help="training epochs (default: the model's published setting)")
    train.add_argument("--batch-size", type=_positive_int, help="training batch size (default: published setting)")
    train.add_argument("--lr", type=_positive_float, help="Adam learning rate (default: published setting)")
    train.add_argument("--seed", type=_non_negative_int, default=0)
    train.add_argument("--patience", type=_non_negative_int, default=0, help="early stopping: validation evaluations without a better AUC (CTR models, one per epoch) or Recall@20 (top-K models, one per eval_every epochs) before training stops (0: off)")
    train.add_argument("--hparams", choices=("lastfm", "book", "synthetic", "recbole"), help="published hyper-parameter set to start from (default: from the dataset name; recbole: top-K models only)")
    train.add_argument("--set", dest="overrides", type=_override, action="append", default=[], metavar="KEY=VALUE", help="override a model hyper-parameter, e.g. --set embedding_dim=32")
    train.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    train.add_argument("--nproc", type=_positive_int, default=1, metavar="N", help="data-parallel training on N local processes (DDP: gloo on CPU, NCCL on CUDA with one GPU each); --batch-size stays the global batch. Under torchrun leave it out")
    train.add_argument("--out", metavar="FILE", help="write the results JSON here")
    train.add_argument("--checkpoint", metavar="DIR", help="write a checkpoint here after every epoch (atomic)")
    train.add_argument("--resume", action="store_true", help="continue from the checkpoint in --checkpoint DIR")
    train.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    train.add_argument("--cuda-graph", action="store_true",
                       help="GPU only: capture the training step (forward, backward, Adam) in a CUDA graph after 3 "
                            "eager steps and replay it, so that the host's Python no longer bounds a small step "
                            "(one process; new quantization noise at every replay)")

    data = commands.add_parser("data", help="dataset utilities")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    info = data_commands.add_parser("info", help="print users, items, interactions, entities, relations, triples")
    info.add_argument("directory", metavar="DIR")
    info.add_argument("--format", dest="fmt", choices=("kgcn", "lastfm-raw", "kgat", "recbole"))
    info.add_argument("--rating-threshold", type=_rating_threshold, default=4.0, metavar="X", help=_RATING_HELP)
    info.add_argument("--json", action="store_true", help="print JSON instead of a table")

    bench = commands.add_parser(
        "bench",
        help="run a benchmark script of benchmarks/ (source checkout only)",
        description="Run benchmarks/<script> with the arguments that follow, e.g. `tinykg bench alternatives --smoke`; "
        "`tinykg bench NAME --help` shows the script's own options.",
    )
    bench.add_argument("script", choices=tuple(BENCH_SCRIPTS), help="which benchmark: " + ", ".join(f"{k} ({v})" for k, v in BENCH_SCRIPTS.items()))
    bench.add_argument("script_args", nargs=argparse.REMAINDER, metavar="ARGS", help="arguments passed to the script")
    return parser


def _human_bytes(n: int | None) -> str:
    if n is None:
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return str(n)


def _check_cuda_graph_options(args, device) -> None:
    """Refuse, before training, what `--cuda-graph` cannot capture."""
    from .compress import Backend
    from .compress.quantize import backend_in_use
    from .nn import _chunks
    from .train import distributed

    if device.type != "cuda":
        raise ValueError(f"--cuda-graph captures GPU steps: it needs --device cuda, got --device {args.device}")
    if args.nproc > 1 or distributed.launched_by_torchrun():
        raise ValueError("--cuda-graph runs one process: leave out --nproc and torchrun")
    if _chunks.DEVICE_CHUNK_ELEMENTS:  # KGAT's chunked CSR product reads its chunk bounds to the host
        raise ValueError("--cuda-graph cannot capture the GPU chunks of TINYKG_DEVICE_CHUNK_ELEMENTS: unset it")
    used = backend_in_use(args.backend, device)
    if args.bits != 32 and used != Backend.TRITON:
        raise ValueError(f"--cuda-graph quantizes with the Triton backend, but --backend {args.backend} runs "
                         f"{used.value!r} on {device} (install triton, and use --backend auto or triton)")


def _cmd_train(args) -> int:
    import torch

    from .train import distributed

    if args.resume and not args.checkpoint:
        raise ValueError("--resume needs --checkpoint DIR")
    if args.data is not None and args.synthetic is not None:
        raise ValueError("--synthetic chooses the built-in data: leave it out with --data")
    # Checked before training, not after the first epoch.
    if args.checkpoint and Path(args.checkpoint).exists() and not Path(args.checkpoint).is_dir():
        raise ValueError(f"--checkpoint {args.checkpoint}: is a file; give a directory")
    if args.out and Path(args.out).is_dir():
        raise ValueError(f"--out {args.out}: is a directory; give a file name")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise ValueError(f"--device {args.device!r}: expected cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {args.device!r}: expected cpu, cuda or cuda:N")
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise ValueError(f"--device {args.device}: no such CUDA device on this machine")
    if args.cuda_graph:
        _check_cuda_graph_options(args, device)
    if args.nproc > 1:
        if distributed.launched_by_torchrun():
            raise ValueError("--nproc starts its own processes: leave it out under torchrun (use --nproc-per-node)")
        if device.type == "cuda" and (device.index is not None or args.nproc > torch.cuda.device_count()):
            raise ValueError(f"--nproc {args.nproc} --device {args.device}: use --device cuda and at most one process per GPU")
        from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

        try:
            return max(distributed.launch(_train_worker, (args,), args.nproc))
        except ChildFailedError:
            return 2  # the failing process has printed its error
    with distributed.process_group(args.device) as device:
        return _train_and_report(args, device)


def _train_and_report(args, device: str) -> int:
    """Train in this process (one rank of a torchrun job, or the only process) and report on rank 0."""
    from .train import distributed
    from .train.run import load_or_generate, train_ctr, write_json_atomic

    dataset = load_or_generate(args.data, args.fmt, synthetic_size=args.synthetic or "default",
                               rating_threshold=args.rating_threshold)
    overrides = dict(args.overrides)
    for name in ("epochs", "batch_size", "lr"):
        value = getattr(args, name)
        if value is not None:
            overrides[name] = value
    log = (lambda _msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr))
    for note in dataset.notes:
        distributed.rank_zero_only(log)(f"note: {note}")
    common = dict(
        bits=args.bits,
        group_size=args.group_size,
        backend=args.backend,
        seed=args.seed,
        overrides=overrides,
        key=args.hparams,
        device=device,
        patience=args.patience,
        progress=not args.quiet and sys.stderr.isatty(),
        cuda_graph=args.cuda_graph,
        log=log,
    )
    if args.model in TOPK_MODEL_NAMES:
        if args.checkpoint:
            raise ValueError(f"--checkpoint/--resume are supported for the CTR models {CTR_MODEL_NAMES}, not {args.model}")
        from .train.topk import train_topk

        result = train_topk(args.model, dataset, **common)
    else:
        result = train_ctr(args.model, dataset, checkpoint_dir=args.checkpoint, resume=args.resume, **common)
    if not distributed.is_main():
        return 0  # rank 0 writes and reports
    if args.out:
        write_json_atomic(args.out, result)
    metrics = "  ".join(f"{k} {v:.4f}" for k, v in result["metrics"].items())
    print(f"test {metrics}  (best epoch {result['best_epoch']} of {result['epochs']}, {result['epoch_seconds']:.2f} s/epoch)")
    act, fp32 = result["activation_bytes"], result["activation_bytes_fp32"]
    line = f"activation memory per step: {_human_bytes(act)}"
    if args.bits != 32:
        line += f"  (fp32: {_human_bytes(fp32)}, {fp32 / act:.1f}x less)"
    if result["world_size"] > 1:
        line += f"  per process, {result['world_size']} processes"
    print(line)
    if args.out:
        print(f"results written to {args.out}")
    return 0


def _train_worker(args) -> int:
    """One process of ``tinykg train --nproc N`` (started by `tinykg.train.distributed.launch`): trains, and
    reports an error the way `main` does before exiting with status 2, which stops the other processes."""
    from .data import DataError
    from .train.loop import TrainingError

    try:
        return _cmd_train(argparse.Namespace(**{**vars(args), "nproc": 1}))
    except (DataError, TrainingError, ValueError, TypeError, OSError) as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"tinykg: error: {message}", file=sys.stderr)
        raise SystemExit(2) from None


def _cmd_data_info(args) -> int:
    from .data import load_dataset

    dataset = load_dataset(args.directory, args.fmt, rating_threshold=args.rating_threshold)
    info = dataset.info()
    if args.json:
        print(json.dumps({"dataset": dataset.name, **info, "notes": list(dataset.notes)}, indent=2))
    else:
        print(f"dataset {dataset.name}")
        for key, value in info.items():
            print(f"  {key:<14}{value:>12,}")
        for note in dataset.notes:
            print(f"note: {note}")
    return 0


def _benchmarks_root() -> Path:
    """benchmarks/ of the source checkout this package is imported from (an editable install)."""
    return Path(__file__).resolve().parent.parent / "benchmarks"


def _cmd_bench(args) -> int:
    import importlib.util

    root = _benchmarks_root()
    if not (root / "bench_models.py").is_file():
        raise FileNotFoundError(
            f"tinykg bench runs the scripts in benchmarks/ of a source checkout, and there is none at {root}: "
            "run it from a clone of the repository installed with `pip install -e .`"
        )
    path = root / BENCH_SCRIPTS[args.script]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such benchmark script in this checkout")
    spec = importlib.util.spec_from_file_location(f"tinykg_bench_{args.script}", path)
    module = importlib.util.module_from_spec(spec)
    # As `python benchmarks/SCRIPT.py` would: the scripts import each other (bench_fp32_cannot uses bench_capacity).
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        spec.loader.exec_module(module)
    except ModuleNotFoundError as err:
        raise ValueError(f"{path.name} needs {err.name}, which is not installed: pip install -e '.[bench]'") from None
    return int(module.main(list(args.script_args)) or 0)


_OUT_OF_MEMORY = ("out of memory (the dataset or model is too large for this machine; tables have max id + 1 rows, "
                  "so one huge user or item id is enough)")


def _is_out_of_memory(err: RuntimeError) -> bool:
    text = str(err)
    return "can't allocate memory" in text or "out of memory" in text.lower()


def main(argv: list[str] | None = None) -> int:
    from .data import DataError
    from .train.loop import TrainingError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "train":
            return _cmd_train(args)
        if args.command == "bench":
            return _cmd_bench(args)
        return _cmd_data_info(args)
    except (DataError, TrainingError, ValueError, TypeError, OSError) as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"tinykg: error: {message}", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"tinykg: error: {_OUT_OF_MEMORY}", file=sys.stderr)
        return 2
    except RuntimeError as err:  # PyTorch reports a failed allocation as a RuntimeError
        if not _is_out_of_memory(err):
            raise
        print(f"tinykg: error: {_OUT_OF_MEMORY}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tinykg: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
