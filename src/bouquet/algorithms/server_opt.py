"""Server optimizers on the pseudo-gradient ``old - aggregate`` (FedAvg = SGD with lr 1; FedAdam).

Pure ``init``/``update`` pairs over flat parameter dicts, optax style, so server state stays a plain
container of tensors that can be checkpointed and sent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..checks import require

Params = dict[str, torch.Tensor]


@dataclass(frozen=True)
class ServerOptimizer:
    """``init(params) -> state``; ``update(params, aggregate, state) -> (params, state)``."""

    name: str
    init: Callable[[Params], dict]
    update: Callable[[Params, Params, dict], tuple[Params, dict]]


def _rate(lr: float, lr_of: Callable[[str], float] | None, name: str) -> float:
    return lr if lr_of is None else lr_of(name)


def server_sgd(lr: float = 1.0, momentum: float = 0.0,
               lr_of: Callable[[str], float] | None = None) -> ServerOptimizer:
    """x <- x - lr * (x - avg) (+ heavy-ball momentum). lr=1, momentum=0 is plain FedAvg."""

    def init(params: Params) -> dict:
        return {k: torch.zeros_like(v) for k, v in params.items()} if momentum else {}

    def update(params: Params, avg: Params, state: dict) -> tuple[Params, dict]:
        new, new_state = {}, {}
        for k, x in params.items():
            if k not in avg:
                new[k] = x
                if momentum:
                    new_state[k] = state[k]
                continue
            g = x - avg[k]
            if momentum:
                g = momentum * state[k] + g
                new_state[k] = g
            new[k] = x - _rate(lr, lr_of, k) * g
        return new, new_state

    return ServerOptimizer("sgd", init, update)


def server_adam(lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                lr_of: Callable[[str], float] | None = None) -> ServerOptimizer:
    """Adam on the pseudo-gradient (FedAdam; FLoRAL's CIFAR-100 setting uses lr 1e-3)."""
    b1, b2 = betas

    def init(params: Params) -> dict:
        state = {f"m.{k}": torch.zeros_like(v) for k, v in params.items()}
        state.update({f"v.{k}": torch.zeros_like(v) for k, v in params.items()})
        state["step"] = torch.zeros((), dtype=torch.float64)
        return state

    def update(params: Params, avg: Params, state: dict) -> tuple[Params, dict]:
        step = state["step"] + 1
        new, new_state = {}, {"step": step}
        t = float(step)
        for k, x in params.items():
            m, v = state[f"m.{k}"], state[f"v.{k}"]
            if k in avg:
                g = x - avg[k]
                m = b1 * m + (1 - b1) * g
                v = b2 * v + (1 - b2) * g * g
                m_hat = m / (1 - b1**t)
                v_hat = v / (1 - b2**t)
                x = x - _rate(lr, lr_of, k) * m_hat / (v_hat.sqrt() + eps)
            new[k], new_state[f"m.{k}"], new_state[f"v.{k}"] = x, m, v
        return new, new_state

    return ServerOptimizer("adam", init, update)


@dataclass(frozen=True)
class ServerConfig:
    """The server optimizer on the pseudo-gradient (``[server]``): sgd (lr 1 = FedAvg) or adam (FedAdam)."""

    #: server optimizer on the pseudo-gradient: 'sgd' (lr 1 = FedAvg) or 'adam' (FedAdam)
    optimizer: str = "sgd"
    #: server learning rate
    lr: float = 1.0
    #: heavy-ball momentum of the sgd server optimizer, in [0, 1)
    momentum: float = 0.0

    def check(self, s: str) -> None:
        require(self.optimizer in ("sgd", "adam"), f"{s}.optimizer", "'sgd' or 'adam'", self.optimizer)
        require(self.lr > 0, f"{s}.lr", "a number > 0", self.lr)
        require(0 <= self.momentum < 1, f"{s}.momentum", "a number in [0, 1)", self.momentum)

    def build(self, lr_of: Callable[[str], float] | None = None) -> ServerOptimizer:
        """The optimizer these settings describe (``lr_of``: a rate per parameter name)."""
        if self.optimizer == "adam":
            return server_adam(self.lr, lr_of=lr_of)
        return server_sgd(self.lr, self.momentum, lr_of)
