"""Row chunks for the per-edge temporaries of gathers and scatters on the CPU.

The gather/scatter ops form (E, D) temporaries (messages ``x[source] * w``, the gradient per edge, the
re-gathered neighbours of a backward) that are freed as soon as they are reduced. On the CPU a temporary
of hundreds of MB costs far more than its arithmetic: each is fresh memory (the allocator maps and unmaps
large blocks, so every page faults in again) and it leaves the cache between the op that writes it and
the one that reads it. In runs of rows of a few MB the same ops reuse one cached block. Measured on this
2-core machine (`benchmarks/RESULTS.md`, "Per-edge temporaries in chunks"): ``out.index_add_(0, target,
x[source] * w)`` over 1M edges of 64 features, 331 ms in one piece against 71 ms in chunks (1 thread);
RippleNet's KGE weights gradient ((1024, 32, 16) rows of 16 x 16), 44 ms against 6 ms.

Every chunked op computes each output element with the same operations in the same order as the one-piece
op (row-wise products and reductions, ``index_add_`` in edge order), so the results are bit for bit the
same; the tests run the ops with a tiny budget against one piece. On other devices the ops run in one
piece: a GPU has no such cliff, and each chunk would cost a host launch.
"""

from __future__ import annotations

import torch

# Elements of one chunk's largest temporary per CPU thread: 512k fp32 = 2 MB, about a core's share of cache.
# Chosen from 256k, 512k, 1M and 2M elements per chunk at 1 and 2 threads (the measurements above).
CPU_CHUNK_ELEMENTS_PER_THREAD = 1 << 19


def row_chunks(num_rows: int, row_elements: int, device: torch.device) -> list[slice | None]:
    """Slices of ``range(num_rows)`` whose temporaries of ``row_elements`` elements per row stay within
    the budget; ``[None]`` (one piece, no slicing) off the CPU or when all rows fit."""
    if device.type != "cpu":
        return [None]
    budget = CPU_CHUNK_ELEMENTS_PER_THREAD * torch.get_num_threads()
    step = max(1, budget // max(row_elements, 1))
    if step >= num_rows:
        return [None]
    return [slice(start, min(start + step, num_rows)) for start in range(0, num_rows, step)]


def rows_of(t: torch.Tensor | None, part: slice | None) -> torch.Tensor | None:
    """``t[part]`` (rows along the first dim); ``t`` itself for one piece or a missing tensor."""
    return t if part is None or t is None else t[part]


def joined(parts: list[torch.Tensor]) -> torch.Tensor:
    """The per-chunk results along the first dim: the one result itself (no copy) for one piece."""
    return parts[0] if len(parts) == 1 else torch.cat(parts)
