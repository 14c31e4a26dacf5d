"""One round of FedIT on SmolLM2-135M: bouquet's clients stacked over one frozen base against an
OpenFedLLM-style loop (one peft model, ``set_peft_model_state_dict`` per client, a plain torch loop).

Both sides start from the same adaptors and train on the same batches (bouquet's round-1 batches), so
their FedAvg results must agree to float tolerance; the script prints the largest difference, the
seconds of each side (interleaved repeats, medians) and, with ``--memory``, each side's peak RSS from
its own subprocess. Workload (issue 19): q_proj and v_proj, rank 8, K = 8 clients, batch 4 x 64 tokens,
5 local steps.

    OMP_NUM_THREADS=2 python benchmarks/lm/batched_vs_loop.py --repeats 3 --memory
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import time

import torch

from bouquet.algorithms.contract import task_loss
from bouquet.app.config import parse_experiment
from bouquet.app.experiment import dataset_for_seed
from bouquet.app.runner import simulator
from bouquet.engine.batching import TRAIN, round_batches
from bouquet.models.hf import load_base

CONFIG = {
    "name": "lm_batched_vs_loop", "algorithms": ["fedit"],
    "data": {"name": "shakespeare_lm", "num_clients": 8, "max_tokens": 64, "min_lines": 60},
    "model": {"name": "hf", "head": "causal_lm"},
    "run": {"rounds": 1, "clients_per_round": 8, "batch_size": 4, "local_steps": 5, "eval_every": 1},
    "train": {"lr": 0.05},
    "algo": {"fedit": {"rank": 8, "targets": ["q_proj", "v_proj"]}},
}


def setup(attention: str, train_chunk: int = 0):
    """bouquet's simulator for the workload, its initial state and the round's client ids and batches.

    ``train_chunk``: clients per stacked forward/backward (``run.train_chunk``; 0 = all 8)."""
    raw = copy.deepcopy(CONFIG)
    raw["model"]["attention"] = attention
    raw["run"]["train_chunk"] = train_chunk
    exp = parse_experiment(raw)
    data = dataset_for_seed(exp, 0)
    sim, _ = simulator(exp, data, "fedit", 0)
    state = sim.init_state()
    ids, _ = sim.driver.sample(state)
    index, weight = round_batches(sim.train, ids, seed=0, round_idx=1, batch_size=4, epochs=1, steps=5,
                                  purpose=TRAIN, shuffle=True)
    return sim, state, ids, sim.train.gather(index, weight)


def ours(sim, state):
    """bouquet's round: the 8 clients' batches stacked over the one frozen base (vmap), then FedAvg."""
    new, _ = sim.run_round(state)
    return new.server["params"]


class PeftLoop:
    """The OpenFedLLM-style baseline: one peft model whose adaptor is swapped per client."""

    def __init__(self, sim, init: dict[str, torch.Tensor], attention: str):
        from peft import LoraConfig, get_peft_model

        # peft edits the model it wraps: a copy of the pretrained base, not bouquet's
        hf = copy.deepcopy(load_base(sim.alg.model.model.checkpoint, "causal_lm", attention=attention))
        layer = next(m for n, m in sim.alg.model.named_modules() if n.endswith("q_proj"))
        cfg = LoraConfig(r=8, lora_alpha=8 * layer.alpha, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
        self.model = get_peft_model(hf, cfg)
        self.names = {k: self.peft_key(k) for k in init}
        self.lr = sim.alg.local_update.plain_sgd().rate(next(iter(init)))

    @staticmethod
    def peft_key(name: str) -> str:
        """bouquet's ``model.hf.<path>.lora_A`` [1, r, in] -> peft's ``base_model.model.<path>.lora_A.weight``."""
        path = name.removeprefix("model.hf.")
        return f"base_model.model.{path}.weight"

    def round(self, global_params: dict[str, torch.Tensor], batches: dict, num_examples: torch.Tensor):
        from peft import get_peft_model_state_dict, set_peft_model_state_dict

        uploads = []
        for k in range(batches["x"].shape[0]):
            set_peft_model_state_dict(self.model, {self.names[n]: v[0].clone() for n, v in global_params.items()})
            params = [p for p in self.model.parameters() if p.requires_grad]
            opt = torch.optim.SGD(params, lr=self.lr)
            for s in range(batches["x"].shape[1]):
                out = self.model(input_ids=batches["x"][k, s].clamp_min(0), use_cache=False).logits
                loss = task_loss(out, batches["y"][k, s], batches["w"][k, s], "language_modeling")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            sd = get_peft_model_state_dict(self.model)
            uploads.append({n: sd[self.names[n]].detach().clone().unsqueeze(0) for n in global_params})
        w = num_examples.to(torch.float32) / num_examples.sum()
        return {n: sum(w[k] * uploads[k][n] for k in range(len(uploads))) for n in global_params}


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def compare(repeats: int, attention: str, loop_attention: str, train_chunk: int = 0) -> dict:
    """Interleaved repeats of both sides; medians, ratio and the largest difference of their results."""
    sim, state, ids, batches = setup(attention, train_chunk)
    init = {k: v.clone() for k, v in state.server["params"].items()}
    loop = PeftLoop(sim, init, loop_attention)
    n = sim.num_examples[ids]
    t_ours, t_loop, diff = [], [], 0.0
    for _ in range(repeats):
        a, ta = timed(lambda: ours(sim, state))
        b, tb = timed(lambda: loop.round(init, batches, n))
        t_ours.append(ta)
        t_loop.append(tb)
        diff = max(diff, max(float((a[k] - b[k]).abs().max()) for k in a))
    scale = max(float(v.abs().max()) for v in a.values())
    return {"ours_s": statistics.median(t_ours), "loop_s": statistics.median(t_loop),
            "ratio": statistics.median(t_loop) / statistics.median(t_ours), "max_abs_diff": diff,
            "max_abs_value": scale, "repeats": repeats, "ours_all": t_ours, "loop_all": t_loop,
            "attention": attention, "loop_attention": loop_attention, "threads": torch.get_num_threads(),
            "train_chunk": train_chunk}


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def peak_rss(side: str, attention: str, train_chunk: int = 0) -> dict:
    """Peak RSS (MB) while one side's round runs alone in this process, and its rise over the RSS before.

    Linux's high-water mark is reset (``/proc/self/clear_refs`` = 5) after loading, so the GGUF
    dequantization peak, the same for both sides, is not what is measured.
    """
    sim, state, ids, batches = setup(attention, train_chunk)
    if side == "loop":
        init = {k: v.clone() for k, v in state.server["params"].items()}
        loop = PeftLoop(sim, init, attention)
        num = torch.ones(len(ids))
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_kb("VmRSS")
    if side == "ours":
        ours(sim, state)
    else:
        loop.round(init, batches, num)
    peak = _status_kb("VmHWM")
    return {"peak_rss_mb": peak / 1024, "rise_mb": (peak - before) / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--attention", default="eager", help="bouquet's attention (vmap batches eager natively)")
    ap.add_argument("--loop-attention", default="sdpa", help="the loop's attention (transformers' default)")
    ap.add_argument("--memory", action="store_true", help="also each side's peak RSS, one subprocess each")
    ap.add_argument("--train-chunk", type=int, default=0, help="bouquet's run.train_chunk (0: all 8 clients stacked)")
    ap.add_argument("--only", choices=["ours", "loop"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.only:
        attention = args.attention if args.only == "ours" else args.loop_attention
        print(json.dumps(peak_rss(args.only, attention, args.train_chunk)))
        return
    result = compare(args.repeats, args.attention, args.loop_attention, args.train_chunk)
    if args.memory:
        for side in ("ours", "loop"):
            out = subprocess.run([sys.executable, __file__, "--only", side, "--attention", args.attention,
                                  "--loop-attention", args.loop_attention, "--train-chunk", str(args.train_chunk)],
                                 capture_output=True, text=True, check=True)
            mem = json.loads(out.stdout.strip().splitlines()[-1])
            result[f"{side}_peak_rss_mb"], result[f"{side}_round_rise_mb"] = mem["peak_rss_mb"], mem["rise_mb"]
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
