"""Row chunks for the per-edge temporaries of gathers and scatters on the CPU.

The gather/scatter ops form (E, D) temporaries (messages ``x[source] * w``, the gradient per edge, the
re-gathered neighbours of a backward) that are freed as soon as they are reduced. On the CPU a temporary
of hundreds of MB costs far more than its arithmetic: each is fresh memory (the allocator maps and unmaps
large blocks, so every page faults in again) and it leaves the cache between the op that writes it and
the one that reads it. In runs of rows of a few MB the same ops reuse one cached block. On this 2-core
machine, one thread (`benchmarks/bench_chunks.py`, `benchmarks/RESULTS.md` section 3): a 2-bit
``edge_aggregate`` forward + backward over 1M edges of 64 features took 972 ms in one piece and 232 ms in
chunks, ``gather_aggregate`` over (8192, 32) neighbours of 64 features 202 ms and 24 ms. The temporaries
also no longer set the step's peak memory: RippleNet's 2-bit step peaked 84 MB above its start on Last.FM
in one piece and 23 MB in chunks (fp32: 165 MB).

Every chunked gather / scatter computes each output element with the same operations in the same order as
the one-piece op (row-wise products and reductions, ``index_add_`` in edge order), so in fp32 and fp64 the
results are bit for bit the same (the tests run the ops with a tiny budget against one piece); fp16 / bf16
tensors run in one piece (`_CHUNKED_DTYPES`). So do the row-wise backwards of `compressed_normalize` and
KGAT's CSR product. Where KGAT's bi-interaction runs in chunks it also forms its neighbourhood A x and adds
A^T g into x's gradient by edge, chunk by chunk: the same terms as the transposed CSR product, in another
order. CKAN's fused attention (`tinykg.models.ckan`), KGCN's fused aggregation backward and
KGAT's bi-interaction (`tinykg.models.kgcn`, `tinykg.models.kgat`) also run in chunks, and are not bit for
bit one piece: their weight gradients are sums over the chunks (another order of the same terms), and a
matrix product's bits may depend on its row count. Their chunks do not depend on the thread count.
Packed activations are dequantized a chunk of rows at a time there (`PackedActivation.rows`,
`tinykg.nn._saved.loaded_rows`), and chunks start on whole groups and bytes (``multiple``).

On other devices the ops run in one piece by default: each chunk costs the host a few launches, which the
small steps bound by a GPU's host would feel. Chunks would lower the allocator's peak, though, which the
temporaries set for the sampled models (`benchmarks/RESULTS.md`, section 3: on an H200 KGCN's and
KGNN-LS's 2-bit peak was 1.02-1.09x below fp32's where the bytes kept for backward were 13-30x below).
``TINYKG_DEVICE_CHUNK_ELEMENTS=N`` chunks them there too, at N elements of the largest temporary per chunk:
an experiment for a GPU lease (peak and step time against one piece), not a measured setting.
"""

from __future__ import annotations

import os

import torch

# Elements of one chunk's largest temporary per CPU thread: 512k fp32 = 2 MB, about a core's share of cache.
# Chosen from 256k, 512k, 1M and 2M elements per chunk at 1 and 2 threads (`benchmarks/bench_chunks.py`).
CPU_CHUNK_ELEMENTS_PER_THREAD = 1 << 19


def _device_budget(text: str | None) -> int | None:
    if text is None or text.strip() == "":
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"TINYKG_DEVICE_CHUNK_ELEMENTS must be a positive integer, got {text!r}")
    return value


# Elements per chunk off the CPU; None: one piece (the default).
DEVICE_CHUNK_ELEMENTS = _device_budget(os.environ.get("TINYKG_DEVICE_CHUNK_ELEMENTS"))


# Chunks are bit for bit one piece only where each chunk's scatter adds into its output in the output's
# own precision: fp32 and fp64. Into fp16 / bf16, one ``index_add_`` call on the CPU sums in fp32 and rounds
# once; one call per chunk would round the running sum once per chunk.
_CHUNKED_DTYPES = (torch.float32, torch.float64)


def row_chunks(
    num_rows: int, row_elements: int, like: torch.Tensor, *, per_thread: bool = True, multiple: int = 1
) -> list[slice | None]:
    """Slices of ``range(num_rows)`` whose temporaries of ``row_elements`` elements per row (of ``like``'s
    device and dtype) stay within the budget; ``[None]`` (one piece, no slicing) when all rows fit, for
    dtypes other than fp32 / fp64, and off the CPU without a ``DEVICE_CHUNK_ELEMENTS``.

    ``per_thread=False``: the CPU budget of one thread whatever torch's thread count, for an op whose
    results depend on where the chunks start (CKAN's attention sums its weight gradients chunk by chunk),
    so that they do not change with the thread count. ``multiple``: every chunk but the last has a multiple
    of this many rows (a bit mask over the rows is sliced at whole bytes when 8 rows are).
    """
    if like.dtype not in _CHUNKED_DTYPES:
        return [None]
    if like.device.type == "cpu":
        budget = CPU_CHUNK_ELEMENTS_PER_THREAD * (torch.get_num_threads() if per_thread else 1)
    elif DEVICE_CHUNK_ELEMENTS is not None:
        budget = DEVICE_CHUNK_ELEMENTS
    else:
        return [None]
    step = max(1, budget // max(row_elements, 1))
    step = max(multiple, step - step % multiple)
    if step >= num_rows:
        return [None]
    return [slice(start, min(start + step, num_rows)) for start in range(0, num_rows, step)]


def rows_of(t: torch.Tensor | None, part: slice | None) -> torch.Tensor | None:
    """``t[part]`` (rows along the first dim); ``t`` itself for one piece or a missing tensor."""
    return t if part is None or t is None else t[part]


def joined(parts: list[torch.Tensor]) -> torch.Tensor:
    """The per-chunk results along the first dim: the one result itself (no copy) for one piece."""
    return parts[0] if len(parts) == 1 else torch.cat(parts)
