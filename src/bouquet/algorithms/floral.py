"""FLoRAL (Almansoori et al., arXiv 2410.03497): a federated base plus C federated low-rank adaptors,
mixed per client by a private router.

Server state: the MixtureModel's parameters without ``router.logits`` (base + adaptors). Client
state: ``router.logits`` [N, C], private. Each round a client trains base, adaptors and router with
plain SGD (one learning rate each, LoRA gradients preconditioned by default), then uploads base,
adaptors and its mixture weights pi_k = softmax(logits) (noise-free, floor-free). The server
averages the base with weights n_k and adaptor c with p(k|c) proportional to n_k * pi_kc; like the
official code it averages A and B separately (not B A): the method's known aggregation mismatch.

The default is the clean form (no router floor, no router noise, zero adaptor-bias init, undamped
server step); ``paper_*`` switches reproduce the official code (see docs/floral.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad

from ..adapters import MixtureModel, inject, mixture_weights, param_role, precondition_lora_grads
from .base import Algorithm, LocalOptimizer, LossSpec, Params, task_loss, weighted_mean
from .routing import (
    MIXTURE_WEIGHT,
    ORACLE_OFF,
    ROUTER,
    component_weights,
    initial_logits,
    routed_mean,
    router_report,
)
from .server_opt import ServerOptimizer, server_sgd


@dataclass(frozen=True)
class RouterConfig:
    """How logits become pi: noise_std * U[0,1) training noise, floor (no renormalisation), temperature."""

    noise_std: float = 0.0
    floor: float = 0.0
    temperature: float = 1.0
    entropy: float = 0.0  # loss - entropy * H(pi): > 0 pushes pi towards uniform, < 0 towards one-hot
    init_std: float = 0.0  # ours: random initial logits N(0, init_std^2) instead of zeros (paper)
    steps: int = 0  # ours: router-only SGD steps (at the router's learning rate) before local training
    select: str = "gradient"  # ours, "loss": each visit pick the component of lowest training loss (IFCA-style)

    def loss_spec(self, precondition_eps: float | None = None) -> LossSpec | None:
        """The routed loss in closed form for the engine's kernels; None with router noise or a floor,
        which are outside that form (the engine then differentiates ``loss`` itself)."""
        if self.noise_std or self.floor:
            return None
        return LossSpec(ROUTER, self.temperature, self.entropy, precondition_eps)


@dataclass(frozen=True)
class LearningRates:
    """Client learning rates of the three parameter roles (plain SGD, fresh each round)."""

    base: float
    adaptor: float
    router: float

    def of(self, name: str) -> float:
        role = param_role(name)
        return self.router if role == "router" else self.adaptor if role == "adaptor" else self.base


def wrap(model: nn.Module, num_adaptors: int, rank: float | int = 0.01, *, adaptor_bias: bool = True,
         init_bias: str = "zeros", router: RouterConfig | None = None, **inject_options) -> MixtureModel:
    """One call from a user's model to a FLoRAL MixtureModel (C adaptors on every Linear/Conv2d)."""
    from ..adapters import Router

    r = router or RouterConfig()
    return inject(model, num_adaptors=num_adaptors, rank=rank, adaptor_bias=adaptor_bias, init_bias=init_bias,
                  router=Router(num_adaptors, noise_std=r.noise_std, floor=r.floor, temperature=r.temperature),
                  **inject_options)


def entropy(pi: Tensor) -> Tensor:
    """Shannon entropy of a mixture (0 log 0 = 0)."""
    return -(pi * torch.log(pi.clamp_min(1e-30))).sum()


def lora_preconditioner(eps: float):
    """``grad_transform`` applying ScaledGD/Riemannian preconditioning to every lora_A/lora_B pair."""

    def transform(trainable: Params, grads: Params) -> Params:
        return precondition_lora_grads(trainable, grads, eps=eps)

    return transform


@dataclass(frozen=True)
class RoutedFunctions:
    """The client side shared by the routed mixtures (FLoRAL, Ensemble), the router report, and the
    router's local learning rate (0 when the router is fixed: the oracle, or chosen by loss)."""

    functions: dict
    report: object
    router_rate: float


def routed_functions(net: nn.Module, task: str, rc: RouterConfig, num: int, optimal_router: bool,
                     init_params: Params, server_opt: ServerOptimizer, router_lr: float) -> RoutedFunctions:
    """init, broadcast, client_init, loss, client_final and personalize of a mixture whose forward takes ``pi``.

    Server state: the mixture's parameters without the router; client state: the router logits
    (private). Clients upload their parameters and ``mixture_weight`` = softmax(logits), never the logits.
    """
    dtype = next(iter(init_params.values())).dtype
    seen: dict[str, Tensor] = {}

    def init(gen, clusters):
        seen["clusters"] = clusters.clone()
        params = {k: v.clone() for k, v in init_params.items()}
        return ({"params": params, "opt": server_opt.init(params)},
                {ROUTER: initial_logits(clusters, num, optimal_router, dtype, gen, rc.init_std)})

    def broadcast(server):
        return dict(server["params"])

    def routed_loss(logits, params, batch):
        pi = mixture_weights(logits, training=True, noise_std=rc.noise_std, floor=rc.floor,
                             temperature=rc.temperature)
        out = functional_call(net, params, (batch["x"],), {"pi": pi}, strict=False)
        value = task_loss(out, batch["y"], batch["w"], task)
        if rc.entropy:
            value = value - rc.entropy * entropy(torch.softmax(logits / rc.temperature, dim=-1))
        return value

    def refresh(logits, params, batches):
        # Router-only SGD on the model just downloaded: the router catches up with components that moved
        # since this client's last visit before they are trained (and averaged) under its weights.
        num_batches = batches["w"].shape[0]
        for i in range(rc.steps):
            batch = {k: v[i % num_batches] for k, v in batches.items()}
            logits = logits - router_lr * grad(routed_loss)(logits, params, batch)
        return logits.detach()

    def choose(logits, params, batches):
        # Loss-selected router: one-hot on the component of lowest loss on this round's training rows.
        # Components tied within float noise (identical at the start) go to the client's largest logit:
        # its last choice, or its random initial preference, which breaks the symmetry between them.
        flat = {k: v.flatten(0, 1) for k, v in batches.items()}
        eye = torch.eye(num, dtype=logits.dtype, device=logits.device)
        losses = torch.stack([task_loss(functional_call(net, params, (flat["x"],), {"pi": eye[c]}, strict=False),
                                        flat["y"], flat["w"], task) for c in range(num)])
        tied = losses <= losses.min() + 1e-6 * (1 + losses.min().abs())
        pick = torch.where(tied, logits, torch.full_like(logits, -torch.inf)).argmax()
        return torch.where(torch.arange(num, device=logits.device) == pick, 0.0, ORACLE_OFF).to(logits.dtype)

    def client_init(payload, client_state, batches):
        trainable = dict(payload)
        if not optimal_router:
            logits = client_state[ROUTER]
            if rc.select == "loss":
                logits = choose(logits, payload, batches)
            elif rc.steps:
                logits = refresh(logits, payload, batches)
            trainable[ROUTER] = logits
        return trainable

    def loss(trainable, payload, client_state, batch):
        logits = trainable.get(ROUTER, client_state[ROUTER])
        return routed_loss(logits, {k: v for k, v in trainable.items() if k != ROUTER}, batch)

    def client_final(trainable, payload, client_state, num_examples):
        logits = trainable.get(ROUTER, client_state[ROUTER])
        upload = {k: v for k, v in trainable.items() if k != ROUTER}
        upload[MIXTURE_WEIGHT] = torch.softmax(logits, dim=-1)  # p(c|k) as in the paper: no noise, floor, temp
        return upload, {ROUTER: logits}

    def personalize(server, client_state):
        return {**server["params"], ROUTER: client_state[ROUTER]}

    functions = {"init": init, "broadcast": broadcast, "client_init": client_init, "loss": loss,
                 "client_final": client_final, "personalize": personalize}
    fixed = optimal_router or rc.select == "loss"  # set at client_init, not trained by SGD
    return RoutedFunctions(functions, router_report(lambda: seen.get("clusters")), 0.0 if fixed else router_lr)


def floral(model: MixtureModel, task: str, *, lr: float, lora_lr: float | None = None, router_lr: float = 0.1,
           router: RouterConfig | None = None, precondition: bool = True, precondition_eps: float = 1e-5,
           optimal_router: bool = False, server_opt: ServerOptimizer | None = None,
           weight_decay: float = 0.0, name: str = "floral") -> Algorithm:
    """Build FLoRAL over a MixtureModel (e.g. from ``wrap``); its parameters are the initial state.

    ``optimal_router=True`` is the oracle: each client's pi is fixed to its true cluster's one-hot.
    ``router`` overrides the MixtureModel's router settings (they are written back to it, since the
    evaluation forward reads them from the template).
    """
    if not isinstance(model, MixtureModel):
        raise TypeError(f"floral needs a MixtureModel (see bouquet.algorithms.floral.wrap), got {type(model)}")
    rc = router or RouterConfig(model.router.noise_std, model.router.floor, model.router.temperature)
    model.router.noise_std, model.router.floor, model.router.temperature = rc.noise_std, rc.floor, rc.temperature
    model.eval()  # the template's mode drives the evaluation forward: no router noise there
    num = model.num_adaptors
    server_opt = server_opt or server_sgd(1.0)
    init_params = {k: v.detach().clone() for k, v in model.named_parameters() if k != ROUTER}
    shared = routed_functions(model, task, rc, num, optimal_router, init_params, server_opt, router_lr)
    rates = LearningRates(lr, lr if lora_lr is None else lora_lr, shared.router_rate)

    def aggregate(server, uploads, num_examples):
        weights = component_weights(uploads[MIXTURE_WEIGHT], num_examples)
        old = server["params"]
        avg = {}
        for k, v in uploads.items():
            if k == MIXTURE_WEIGHT:
                continue
            avg[k] = routed_mean(v, weights, old[k]) if param_role(k) == "adaptor" else weighted_mean(v, num_examples)
        params, opt = server_opt.update(old, avg, server["opt"])
        return {"params": params, "opt": opt}

    adaptors = sum(v.numel() for k, v in init_params.items() if param_role(k) == "adaptor")
    base = sum(v.numel() for k, v in init_params.items() if param_role(k) == "base")
    optimizer = LocalOptimizer(lr=lr, lr_of=rates.of, weight_decay=weight_decay,
                               grad_transform=lora_preconditioner(precondition_eps) if precondition else None)
    alg = Algorithm(name=name, model=model, task=task, **shared.functions, aggregate=aggregate,
                    optimizer=optimizer, private_keys=("router.",),
                    loss_spec=rc.loss_spec(precondition_eps if precondition else None))
    alg.hparams.update(
        param_counts={"adaptors": adaptors, "router": num, "uploaded": base + adaptors + num},
        report=shared.report,
        num_adaptors=num, optimal_router=optimal_router,
    )
    return alg


def damped_server_lr(server_lr: float, lora_lr: float):
    """The official code's server step: adaptors move by lora_lr of their averaged update, the rest by server_lr."""

    def lr_of(name: str) -> float:
        return lora_lr if param_role(name) == "adaptor" else server_lr

    return lr_of
