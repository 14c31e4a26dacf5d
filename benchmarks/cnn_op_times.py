"""Where a round of the batched conv kernels goes, op by op, timed at the dispatcher instead of by torch.profiler.

torch.profiler inflated the memory-heavy ops of this workload about tenfold (the max-pool backward's zero fill
read 2.8 ms a call under it, 0.7 ms for the whole backward timed by hooks), so this script times every aten op
of one kernel round with ``perf_counter`` in a ``TorchDispatchMode`` and counts ops per source line of bouquet.
Per-op Python overhead of the mode inflates small ops; the big ones (convolutions, matmuls, copies) are close
to their own cost. Workload: FLoRAL's CNN, as in ``cnn_paths.py``.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/cnn_op_times.py [--threads 2] [--top 20]
"""

from __future__ import annotations

import argparse
import collections
import sys
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from bouquet.app.bench.workload import build_data, build_floral, cnn_workload
from bouquet.engine.simulator import Simulator
from bouquet.engine.spec import RunSpec


class _OpTimes(TorchDispatchMode):
    """Seconds and calls per (op, input shapes), and calls per bouquet source line."""

    def __init__(self) -> None:
        super().__init__()
        self.times: dict[tuple, list[float]] = collections.defaultdict(lambda: [0, 0.0])
        self.lines: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        frame, where = sys._getframe(1), "autograd backward (no Python frame)"
        while frame is not None:
            name = frame.f_code.co_filename
            if "/bouquet/" in name:
                where = f"{name.split('/bouquet/')[1]}:{frame.f_lineno} {frame.f_code.co_name}"
                break
            frame = frame.f_back
        self.lines[where] += 1
        start = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        shapes = tuple(tuple(a.shape) for a in args[:3] if isinstance(a, torch.Tensor))
        entry = self.times[(str(func), shapes)]
        entry[0] += 1
        entry[1] += time.perf_counter() - start
        return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--top", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    w = cnn_workload()
    data = build_data(w)
    sim = Simulator(build_floral(w, data), data,
                    RunSpec(rounds=100, clients_per_round=w.clients_per_round, batch_size=w.batch_size), seed=w.seed)
    state = sim.init_state()
    for _ in range(3):
        state, _ = sim.run_round(state)
    start = time.perf_counter()
    for _ in range(3):
        state, _ = sim.run_round(state)
    plain = (time.perf_counter() - start) / 3
    mode = _OpTimes()
    start = time.perf_counter()
    with mode:
        state, _ = sim.run_round(state)
    timed = time.perf_counter() - start
    calls = sum(n for n, _ in mode.times.values())
    print(f"threads={args.threads}: {plain:.3f} s/round plain, {timed:.3f} s under the timing mode, {calls} ops/round")
    per_op: dict[str, float] = collections.defaultdict(float)
    for (op, _), (_, seconds) in mode.times.items():
        per_op[op] += seconds
    print("\n| op | ms/round | share of the plain round |\n|---|---|---|")
    for op, seconds in sorted(per_op.items(), key=lambda kv: -kv[1])[:args.top]:
        print(f"| {op} | {seconds * 1e3:.1f} | {seconds / plain:.0%} |")
    print("\n| op, input shapes | calls | ms/round |\n|---|---|---|")
    for (op, shapes), (n, seconds) in sorted(mode.times.items(), key=lambda kv: -kv[1][1])[:args.top]:
        print(f"| {op} {list(shapes)} | {n} | {seconds * 1e3:.1f} |")
    print("\n| bouquet source line | ops/round |\n|---|---|")
    for where, n in mode.lines.most_common(args.top):
        print(f"| {where} | {n} |")


if __name__ == "__main__":
    main()
