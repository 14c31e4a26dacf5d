"""Server optimizers on the pseudo-gradient ``old - aggregate`` (FedAvg = SGD with lr 1; FedAdam).

Pure ``init``/``update`` pairs over flat parameter dicts, optax style, so server state stays a plain
container of tensors that can be checkpointed and sent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .base import Params


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


def build_server_optimizer(name: str, lr: float, momentum: float = 0.0,
                           lr_of: Callable[[str], float] | None = None) -> ServerOptimizer:
    """Server optimizer by config name (``sgd`` or ``adam``)."""
    if name == "sgd":
        return server_sgd(lr, momentum, lr_of)
    if name == "adam":
        return server_adam(lr, lr_of=lr_of)
    raise ValueError(f"server.optimizer: expected 'sgd' or 'adam', got {name!r}")
