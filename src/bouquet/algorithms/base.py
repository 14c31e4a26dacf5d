"""The algorithm contract: pure functions over explicit state, shared by every engine.

An algorithm never sees an engine. What crosses the network is a ``Payload`` (flat dict of named
tensors). Client-side functions are written for ONE client and must be ``torch.func.vmap``-able:
the local engine runs them over a leading client dimension, the sequential and Flower engines call
them one client at a time, and all give the same numbers.

Round, as every engine runs it::

    payload = broadcast(server)                                 # download, same for all sampled clients
    trainable = client_init(payload, client_state, batches)     # per client (vmapped)
    for batch in batches: SGD step on loss(trainable, payload, client_state, batch)
    upload, client_state = client_final(trainable, payload, client_state, num_examples)   # per client
    server = aggregate(server, stacked uploads, stacked num_examples)
    evaluation: personalize(server, client_state) -> parameters of that client's model
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

Params = dict[str, Tensor]
Payload = dict[str, Tensor]
ServerState = dict[str, Any]  # nested dicts of tensors: {"params": {...}, "opt": {...}, ...}
ClientStates = dict[str, Tensor]  # every entry has a leading dim over ALL registered clients
Batch = dict[str, Tensor]  # {"x": [B, ...], "y": [B] or [B, d], "w": [B] example weights (0 = padding)}


@dataclass(frozen=True)
class LocalOptimizer:
    """Plain SGD as in the papers (fresh each round), with a learning rate per parameter name.

    ``lr_of(name)`` gives the learning rate of a trainable tensor (router, adaptors and base can differ);
    ``grad_transform(trainable, grads)`` is applied before the step (LoRA preconditioning, ...).
    """

    lr: float
    lr_of: Callable[[str], float] | None = None
    weight_decay: float = 0.0
    grad_transform: Callable[[Params, Params], Params] | None = None

    def rate(self, name: str) -> float:
        return self.lr if self.lr_of is None else self.lr_of(name)


@dataclass(frozen=True)
class LossSpec:
    """What ``loss`` computes, declared for engines that train some models with hand-written kernels.

    The loss is the task loss of the algorithm's model on the trainable parameters, with the mixture
    weights pi = softmax(params[logits] / temperature) (``logits`` None: the model has no router, or a
    single adaptor with pi = [1]), minus ``entropy`` * H(pi); the optimizer's ``grad_transform`` is the
    LoRA preconditioner with ``precondition_eps`` (None: no transform). An algorithm whose loss is not
    of this form leaves ``Algorithm.loss_spec`` at None and is always trained through ``loss``.
    """

    logits: str | None = None
    temperature: float = 1.0
    entropy: float = 0.0
    precondition_eps: float | None = None


@dataclass(frozen=True)
class Algorithm:
    """A federated algorithm as a bundle of pure functions (see the module docstring for the round).

    ``model`` is a template module used only through ``functional_call``; its own tensors are never
    trained. ``private_keys`` names client-state entries that must never appear in an upload (checked
    by the engines). ``finetune_filter`` marks which personalized parameters local fine-tuning at
    evaluation may change (FedAvg+FT, FedIT+FT); ``None`` means the algorithm is not fine-tuned.
    """

    name: str
    model: nn.Module
    task: str
    init: Callable[[torch.Generator, Tensor], tuple[ServerState, ClientStates]]
    broadcast: Callable[[ServerState], Payload]
    client_init: Callable[[Payload, Mapping[str, Tensor], Batch], Params]
    loss: Callable[[Params, Payload, Mapping[str, Tensor], Batch], tuple[Tensor, Tensor]]
    client_final: Callable[[Params, Payload, Mapping[str, Tensor], Tensor], tuple[Payload, dict]]
    aggregate: Callable[[ServerState, Payload, Tensor], ServerState]
    personalize: Callable[[ServerState, Mapping[str, Tensor]], Params]
    optimizer: LocalOptimizer
    private_keys: tuple[str, ...] = ()
    finetune_filter: Callable[[str], bool] | None = None
    hparams: dict = field(default_factory=dict)
    # True: engines pass the round's batches to client_final as a 5th argument (Potara's Fisher traces).
    final_batches: bool = False
    # Declares ``loss`` in closed form, so the local engine may train chain models (MLPs) by hand-batched
    # kernels (engine/chain.py) instead of vmap + autograd; same numbers, checked in the tests.
    loss_spec: LossSpec | None = None

    def apply(self, params: Params, x: Tensor) -> Tensor:
        """Run the model with the given parameters (``functional_call`` on the template)."""
        return functional_call(self.model, params, (x,), strict=False)


# ---------------------------------------------------------------------------------------------
# Small pure helpers used by every algorithm.


def task_loss(out: Tensor, y: Tensor, w: Tensor, task: str) -> Tensor:
    """Example-weighted mean loss: cross-entropy for classification, squared error for regression.

    Padding examples have weight 0, so a padded batch gives exactly the loss of its real examples.
    """
    if task == "classification":
        per_example = F.cross_entropy(out, y, reduction="none")
    else:
        per_example = ((out - y) ** 2).reshape(out.shape[0], -1).mean(dim=1)
    return (per_example * w).sum() / w.sum().clamp_min(1.0)


def task_score(out: Tensor, y: Tensor, task: str) -> Tensor:
    """Per-example score: 1/0 correctness for classification, squared error for regression."""
    if task == "classification":
        return (out.argmax(dim=-1) == y).to(out.dtype)
    return ((out - y) ** 2).reshape(out.shape[0], -1).mean(dim=1)


def model_params(model: nn.Module) -> Params:
    """A detached copy of a module's parameters (its trainable state)."""
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def stack_for_clients(params: Params, num_clients: int) -> ClientStates:
    """Repeat one parameter dict along a new leading client dimension (a real copy per client)."""
    return {k: v.unsqueeze(0).repeat(num_clients, *([1] * v.dim())).contiguous() for k, v in params.items()}


def weighted_mean(stacked: Tensor, weights: Tensor) -> Tensor:
    """Mean over the leading (client) dim with non-negative weights summing to anything > 0."""
    w = weights.to(stacked.dtype)
    w = w / w.sum().clamp_min(torch.finfo(stacked.dtype).tiny)
    return torch.tensordot(w, stacked, dims=1)


def payload_nbytes(payload: Mapping[str, Tensor]) -> int:
    """Bytes of one client's payload: the sum of its tensors' sizes (what would be serialized)."""
    return int(sum(t.numel() * t.element_size() for t in payload.values()))


def prefixed(params: Mapping[str, Tensor], prefix: str) -> Params:
    """Entries whose key starts with ``prefix``, with the prefix removed."""
    n = len(prefix)
    return {k[n:]: v for k, v in params.items() if k.startswith(prefix)}


def add_prefix(params: Mapping[str, Tensor], prefix: str) -> Params:
    return {prefix + k: v for k, v in params.items()}
