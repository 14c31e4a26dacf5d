"""``RunSpec``: how a federation is run (rounds, sampling, local steps, engine paths), not what is learned.

It is the engine's half of the ``[run]`` table; the experiment's ``RunConfig`` extends it with what
only a whole experiment needs (seeds, engine, threads, checkpoints), so each setting has one home.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..checks import require


@dataclass(frozen=True)
class RunSpec:
    """Rounds, clients per round, local steps and how the local engine runs them."""

    #: number of federated rounds
    rounds: int
    #: clients sampled (uniformly, without replacement) each round
    clients_per_round: int
    #: local mini-batch size
    batch_size: int
    #: passes over the client's training rows per round (unless local_steps is set)
    local_epochs: int = 1
    #: fixed number of local steps per round (overrides local_epochs)
    local_steps: int | None = None
    #: evaluate every client every k rounds (and at the last round)
    eval_every: int = 10
    #: all clients of a round in one vmapped step (true), one after another (false), or "auto": one after
    #: another for models with convolutions on CPU, where vmap's grouped convs are slower, vmapped otherwise
    vectorized: bool | str = "auto"
    #: MLP chains of algorithms with a closed-form loss train by engine/mlp_kernels.py, conv chains by
    #: engine/conv_kernels.py (false: vmap + autograd, or the client loop)
    hand_batched: bool = True
    #: clients evaluated (and fine-tuned) together
    eval_chunk: int = 64
    #: vmapped training: at most this many clients in one stacked forward/backward (0: all clients of the
    #: round), bounding activation memory (a large model's stacked logits) at the same results
    train_chunk: int = 0
    #: reshuffle each client's training rows every local epoch
    shuffle: bool = True
    #: torch device: 'cpu', 'cuda[:N]' or 'auto' (cuda when a CUDA device is available, cpu otherwise)
    device: str = "cpu"

    def check(self, s: str) -> None:
        for k in ("rounds", "clients_per_round", "batch_size", "local_epochs", "eval_every", "eval_chunk"):
            require(getattr(self, k) >= 1, f"{s}.{k}", "an integer >= 1", getattr(self, k))
        require(self.train_chunk >= 0, f"{s}.train_chunk", "an integer >= 0 (0: all clients at once)",
                self.train_chunk)
        require(self.local_steps is None or self.local_steps >= 1, f"{s}.local_steps", "none or >= 1",
                self.local_steps)
        require(self.vectorized in (True, False, "auto"), f"{s}.vectorized", "true, false or 'auto'",
                self.vectorized)
        require(self.device in ("cpu", "auto") or self.device.startswith("cuda"), f"{s}.device",
                "'cpu', 'cuda[:N]' or 'auto'", self.device)

    def is_eval_round(self, round_idx: int) -> bool:
        """Every ``eval_every`` rounds and at the last round."""
        return round_idx % self.eval_every == 0 or round_idx == self.rounds


def resolve_device(device: str) -> str:
    """`run.device` to a torch device string: "auto" is cuda when a CUDA device is available, else cpu."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_vectorized(setting: bool | str, model: nn.Module, device: str) -> bool:
    """`run.vectorized` to a bool: "auto" runs clients one by one for conv models on CPU, vmapped otherwise.

    On CPU, vmap turns each client's convolution into one grouped convolution, which measured 1.2-2.4x
    slower than a loop over clients for FLoRAL's CNN (benchmarks/RESULTS.md); dense layers batch well.
    """
    if setting != "auto":
        return bool(setting)
    has_conv = any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())
    return not (has_conv and torch.device(device).type == "cpu")
