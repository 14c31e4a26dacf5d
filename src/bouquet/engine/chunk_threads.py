"""Independent chunks of clients trained at once on worker threads, each with its own intra-op thread count.

The conv kernels run about 26,000 small ops a round; with two intra-op threads every op pays a parallel
region's fork and join for little work. Two chunks at a time, one thread each, keep both cores busy
instead (benchmarks/RESULTS.md: 1.69-1.73x -> 2.03-2.06x the PFLlib-style loop on FLoRAL's CNN). PyTorch releases
the GIL inside ops and runs a CPU backward on the calling thread, so the chunks overlap except for
Python's own dispatch. The intra-op thread count is per thread: the caller's stays as it was.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

Item = TypeVar("Item")
Result = TypeVar("Result")


def resolve_workers(requested: int, device: torch.device | str = "cpu") -> int:
    """The worker count for ``requested`` (0 = one per intra-op thread on CPU, 1 on other devices)."""
    if requested < 0:
        raise ValueError(f"workers must be >= 0 (0 = one per intra-op thread), got {requested}")
    if requested:
        return requested
    return torch.get_num_threads() if torch.device(device).type == "cpu" else 1


@functools.lru_cache(maxsize=4)
def _pool(workers: int, threads_each: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(workers, thread_name_prefix="bouquet-chunk",
                              initializer=torch.set_num_threads, initargs=(threads_each,))


def map_chunks(fn: Callable[[Item], Result], items: Sequence[Item], workers: int) -> list[Result]:
    """``[fn(item) for item in items]``, ``workers`` at a time on threads sharing the caller's intra-op threads.

    One worker (or one item) runs in the caller's thread. Workers run under the caller's grad mode (it is
    per thread too). Results keep the order of ``items``; the first exception raised by ``fn`` is raised here.
    """
    workers = min(workers, len(items))
    if workers <= 1:
        return [fn(item) for item in items]
    threads_each = max(1, torch.get_num_threads() // workers)
    grad = torch.is_grad_enabled()

    def run(item: Item) -> Result:
        with torch.set_grad_enabled(grad):
            return fn(item)

    return list(_pool(workers, threads_each).map(run, items))
