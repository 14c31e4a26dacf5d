"""The algorithm contract: pure functions over explicit state, shared by every engine.

An algorithm never sees an engine. What crosses the network is a ``Payload`` (flat dict of named
tensors). Client-side functions are written for ONE client and must be ``torch.func.vmap``-able:
the local engine runs them over a leading client dimension, the client loop and Flower call them one
client at a time, and all give the same numbers.

Round, as every engine runs it (``engine.rounds`` drives it)::

    payload = broadcast(server)                                  # download, same for all sampled clients
    trainable = client_init(payload, client_state, batches)      # per client
    for step, batch in enumerate(batches):                       # the algorithm's own local step:
        grads = d loss(trainable, payload, client_state, batch)  #   its loss ...
        trainable += local_update(grads, trainable, step, payload)  # ... and its update rule
    upload, client_state = client_final(trainable, payload, client_state, num_examples, batches)
    server = aggregate(server, stacked uploads, stacked num_examples)
    evaluation: apply(personalize(server, client_state), x)      # that client's personalized model
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from ..checks import require
from .local_update import LocalUpdate
from .routing import RouterConfig
from .server_opt import ServerOptimizer

Params = dict[str, Tensor]
Payload = dict[str, Tensor]
ServerState = dict[str, Any]  # nested dicts of tensors: {"params": {...}, "opt": {...}, ...}
ClientStates = dict[str, Tensor]  # every entry has a leading dim over ALL registered clients
Batch = dict[str, Tensor]  # {"x": [B, ...], "y": [B] or [B, d], "w": [B] example weights (0 = padding)}
Objective = str  # "classification" | "regression" | "language_modeling"
OBJECTIVES = ("classification", "regression")


@dataclass(frozen=True)
class TrainConfig:
    """The clients' local optimizer (``[train]``): plain SGD, fresh each round, as in the papers."""

    #: clients' local SGD learning rate
    lr: float
    #: L2 weight decay of the local SGD steps
    weight_decay: float = 0.0

    def check(self, s: str) -> None:
        require(self.lr > 0, f"{s}.lr", "a number > 0", self.lr)
        require(self.weight_decay >= 0, f"{s}.weight_decay", "a number >= 0", self.weight_decay)


@dataclass(frozen=True)
class LossSpec:
    """A declaration that ``loss`` has the closed form the engine's hand-batched kernels implement.

    The loss is the task loss of the algorithm's model on the trainable parameters, with mixture weights
    pi = softmax((router.logits + router.noise * U[0, 1)) / router.temperature) clamped from below at
    ``router.floor``, members with pi_c < ``skip_below`` left out (an Ensemble's), minus ``router.entropy``
    * H(softmax(logits / temperature)) when ``router`` is set; pi = [1] without one (plain models, single
    adaptors). The noise is one ``torch.rand`` of [clients, C] per local step, as vmap draws it. The
    engine trusts it only after checking the kernels' first local step against autograd on ``loss``
    (``engine.kernel_check``); an algorithm whose loss is not of this form leaves ``loss_spec`` at None.
    """

    router: RouterConfig | None = None
    #: an Ensemble's members with pi_c below this are left out of the sum (0: every member)
    skip_below: float = 0.0

    @property
    def closed_form(self) -> bool:
        """pi is softmax(logits / temperature) exactly (no noise, floor or skip): what the MLP kernels take."""
        return (self.router is None or self.router.closed_form) and not self.skip_below


@dataclass(frozen=True)
class Finetune:
    """Local fine-tuning of the personalized model before each evaluation (FedAvg+FT, FedIT+FT).

    ``trainable(name)`` marks the personalized parameters it may change; evaluation only, the run's
    state is unchanged.
    """

    epochs: int
    lr: float
    trainable: Callable[[str], bool] = lambda name: True


@dataclass(frozen=True)
class Merging:
    """Hooks of an algorithm that merges two models per client with a weight lambda (Potara).

    ``merge(server, client_state, lam)`` gives the personalized parameters at any lambda (a scalar, or
    one per layer of ``layers``); ``weight(server, client_state)`` is the algorithm's own lambda;
    ``terms(server, client_state)``, if set, the named quantities lambda is computed from (diagnostics).
    """

    merge: Callable[[ServerState, Mapping[str, Tensor], Tensor], Params]
    weight: Callable[[ServerState, Mapping[str, Tensor]], Tensor]
    layers: tuple[str, ...] | None = None
    terms: Callable[[ServerState, Mapping[str, Tensor]], dict[str, Tensor]] | None = None


@dataclass(frozen=True)
class ChooseByLoss:
    """A ``client_init`` that chooses from C candidate models' task losses on the round's batches (IFCA's
    cluster, FLoRAL's loss-selected or EM router).

    ``candidates(payload)`` gives the C models' parameters stacked [C, ...] under the personalized model's
    names; ``pick(payload, client_state, losses, batches)`` the trainable parameters from the C losses [C] (the
    batches give the row weights). ``client_init`` equals ``pick`` on the losses of ``apply`` with each
    candidate, so an engine with a batched forward may compute the losses of all clients and candidates at
    once instead of one client's at a time.
    """

    candidates: Callable[[Payload], Params]
    pick: Callable[[Payload, Mapping[str, Tensor], Tensor], Params]


ReportFn = Callable[[ServerState, Mapping[str, Tensor], Tensor], dict]


@dataclass(frozen=True)
class Algorithm:
    """A federated algorithm as a bundle of pure functions (see the module docstring for the round).

    ``model`` is a template used only through ``functional_call``; its own tensors are never trained and
    the algorithm never writes to it. ``forward`` replaces the plain ``functional_call`` where the
    personalized parameters are not the model's own (a router turned into pi, APFL's two outputs).
    ``private_keys`` name client-state entries that must never appear in an upload (checked by the
    engines). ``param_counts`` adds algorithm-specific counts to the run summary; ``report(server,
    client_states, true_clusters)`` adds end-of-run diagnostics (router ARI); ``merging`` exposes a
    merge weight to the lambda oracle; ``choose_by_loss`` declares a client_init that picks a model by loss.
    """

    name: str
    model: nn.Module
    objective: Objective
    init: Callable[[torch.Generator, Tensor], tuple[ServerState, ClientStates]]
    broadcast: Callable[[ServerState], Payload]
    client_init: Callable[[Payload, Mapping[str, Tensor], Batch], Params]
    loss: Callable[[Params, Payload, Mapping[str, Tensor], Batch], Tensor]
    client_final: Callable[[Params, Payload, Mapping[str, Tensor], Tensor, Batch], tuple[Payload, dict]]
    aggregate: Callable[[ServerState, Payload, Tensor], ServerState]
    personalize: Callable[[ServerState, Mapping[str, Tensor]], Params]
    local_update: LocalUpdate
    forward: Callable[[Params, Tensor], Tensor] | None = None
    private_keys: tuple[str, ...] = ()
    finetune: Finetune | None = None
    loss_spec: LossSpec | None = None
    param_counts: Mapping[str, int] = field(default_factory=dict)
    report: ReportFn | None = None
    merging: Merging | None = None
    choose_by_loss: ChooseByLoss | None = None

    def apply(self, params: Params, x: Tensor) -> Tensor:
        """Run the model with the given parameters."""
        if self.forward is not None:
            return self.forward(params, x)
        return functional_call(self.model, params, (x,), strict=False)

    @contextlib.contextmanager
    def mode(self, training: bool) -> Iterator[None]:
        """The template in train (dropout on) or eval mode for the block, restored afterwards."""
        before = [(m, m.training) for m in self.model.modules()]
        self.model.train(training)
        try:
            yield
        finally:
            for m, was in before:
                m.training = was


# ---------------------------------------------------------------------------------------------
# Small pure helpers used by every algorithm.


IGNORE_TOKEN = -100  # language modelling: a target position that carries no loss (window padding)


def task_loss(out: Tensor, y: Tensor, w: Tensor, objective: Objective) -> Tensor:
    """Example-weighted mean loss: cross-entropy for classification, squared error for regression.

    Padding examples have weight 0, so a padded batch gives exactly the loss of its real examples.
    ``language_modeling``: next-token cross-entropy per token (logits [n, T, V], targets [n, T] with
    IGNORE_TOKEN where no loss is due), the mean over the weighted examples' real tokens.
    """
    if objective == "language_modeling":
        nll = F.cross_entropy(out.flatten(0, -2), y.flatten(), ignore_index=IGNORE_TOKEN, reduction="none")
        tokens = (y != IGNORE_TOKEN).to(out.dtype) * w.unsqueeze(-1)
        return (nll.view_as(tokens) * tokens).sum() / tokens.sum().clamp_min(1.0)
    if objective == "classification":
        per_example = F.cross_entropy(out, y, reduction="none")
    else:
        per_example = ((out - y) ** 2).reshape(out.shape[0], -1).mean(dim=1)
    return (per_example * w).sum() / w.sum().clamp_min(1.0)


def task_score(out: Tensor, y: Tensor, objective: Objective) -> Tensor:
    """Per-example score: 1/0 correctness for classification, squared error for regression.

    ``language_modeling`` scores a client as a whole (``client_score``), not per example.
    """
    if objective == "classification":
        return (out.argmax(dim=-1) == y).to(out.dtype)
    return ((out - y) ** 2).reshape(out.shape[0], -1).mean(dim=1)


def client_score(out: Tensor, y: Tensor, w: Tensor, objective: Objective) -> tuple[Tensor, Tensor]:
    """(score, loss) of one client's weighted examples: accuracy / MSE, or perplexity exp(token NLL)."""
    loss = task_loss(out, y, w, objective)
    if objective == "language_modeling":
        return loss.exp(), loss
    s = task_score(out, y, objective)
    return (s * w).sum() / w.sum().clamp_min(1.0), loss


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


def fedavg_aggregate(server_opt: ServerOptimizer) -> Callable[[ServerState, Payload, Tensor], ServerState]:
    """``aggregate`` of every FedAvg-style method: each upload averaged by n_k, then the server optimizer."""

    def aggregate(server: ServerState, uploads: Payload, num_examples: Tensor) -> ServerState:
        avg = {k: weighted_mean(v, num_examples) for k, v in uploads.items()}
        params, opt = server_opt.update(server["params"], avg, server["opt"])
        return {**server, "params": params, "opt": opt}

    return aggregate


def payload_nbytes(payload: Mapping[str, Tensor]) -> int:
    """Bytes of one client's payload: the sum of its tensors' sizes (what would be serialized)."""
    return int(sum(t.numel() * t.element_size() for t in payload.values()))


def prefixed(params: Mapping[str, Tensor], prefix: str) -> Params:
    """Entries whose key starts with ``prefix``, with the prefix removed."""
    n = len(prefix)
    return {k[n:]: v for k, v in params.items() if k.startswith(prefix)}


def add_prefix(params: Mapping[str, Tensor], prefix: str) -> Params:
    """Every key with ``prefix`` in front."""
    return {prefix + k: v for k, v in params.items()}
