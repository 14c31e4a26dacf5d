"""Ensemble (FLoRAL's baseline): C full models mixed per client by a private router, sum_c pi_c f_c(x).

Model c is aggregated with the same weights as FLoRAL's adaptor c, p(k|c) proportional to
n_k * pi_kc. The C models are initialised independently (identical copies with a uniform router
would receive identical updates and never specialise without router noise).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ..adapters import Router, mixture_weights
from .base import Algorithm, LocalOptimizer, task_loss
from .floral import RouterConfig, entropy
from .routing import MIXTURE_WEIGHT, ROUTER, component_weights, initial_logits, routed_mean, router_report
from .server_opt import ServerOptimizer, server_sgd

MEMBERS = "members."


def reinitialize(module: nn.Module) -> nn.Module:
    """Fresh default initialisation of every submodule that has ``reset_parameters`` (global torch RNG)."""
    for m in module.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    return module


def independent_copies(model: nn.Module, num: int) -> list[nn.Module]:
    """``model`` itself (copied) and ``num - 1`` freshly initialised copies."""
    first = copy.deepcopy(model)
    return [first] + [reinitialize(copy.deepcopy(model)) for _ in range(num - 1)]


class EnsembleModel(nn.Module):
    """C member models and a router; parameters ``members.<c>.<name>`` and ``router.logits``."""

    def __init__(self, members: list[nn.Module], router: Router) -> None:
        super().__init__()
        if len(members) != router.num_adaptors:
            raise ValueError(f"{len(members)} members but the router mixes {router.num_adaptors}")
        self.members = nn.ModuleList(members)
        self.router = router

    def forward(self, x: Tensor, pi: Tensor | None = None) -> Tensor:
        """The pi-weighted sum of the members' outputs (logits for classification)."""
        if pi is None:
            pi = self.router.weights(self.training)
        return sum(pi[c] * m(x) for c, m in enumerate(self.members))


def member_of(name: str) -> int:
    """Index c of the member a parameter ``members.<c>.*`` belongs to."""
    return int(name[len(MEMBERS):].split(".", 1)[0])


def ensemble(model: nn.Module, task: str, num_models: int, *, lr: float, router_lr: float = 0.1,
             router: RouterConfig | None = None, optimal_router: bool = False,
             server_opt: ServerOptimizer | None = None, weight_decay: float = 0.0,
             name: str = "ensemble") -> Algorithm:
    """Build the Ensemble baseline from one model (copied C times, independently initialised)."""
    rc = router or RouterConfig()
    net = EnsembleModel(independent_copies(model, num_models),
                        Router(num_models, noise_std=rc.noise_std, floor=rc.floor, temperature=rc.temperature))
    net.eval()
    server_opt = server_opt or server_sgd(1.0)
    init_params = {k: v.detach().clone() for k, v in net.named_parameters() if k != ROUTER}
    dtype = next(iter(init_params.values())).dtype
    router_rate = 0.0 if optimal_router else router_lr
    seen: dict[str, Tensor] = {}

    def init(gen, clusters):
        seen["clusters"] = clusters.clone()
        params = {k: v.clone() for k, v in init_params.items()}
        return ({"params": params, "opt": server_opt.init(params)},
                {ROUTER: initial_logits(clusters, num_models, optimal_router, dtype, gen, rc.init_std)})

    def broadcast(server):
        return dict(server["params"])

    def client_init(payload, client_state, batches):
        trainable = dict(payload)
        if not optimal_router:
            trainable[ROUTER] = client_state[ROUTER]
        return trainable

    def loss(trainable, payload, client_state, batch):
        logits = trainable.get(ROUTER, client_state[ROUTER])
        pi = mixture_weights(logits, training=True, noise_std=rc.noise_std, floor=rc.floor,
                             temperature=rc.temperature)
        params = {k: v for k, v in trainable.items() if k != ROUTER}
        out = functional_call(net, params, (batch["x"],), {"pi": pi}, strict=False)
        value = task_loss(out, batch["y"], batch["w"], task)
        if rc.entropy:
            value = value - rc.entropy * entropy(torch.softmax(logits / rc.temperature, dim=-1))
        return value

    def client_final(trainable, payload, client_state, num_examples):
        logits = trainable.get(ROUTER, client_state[ROUTER])
        upload = {k: v for k, v in trainable.items() if k != ROUTER}
        upload[MIXTURE_WEIGHT] = torch.softmax(logits, dim=-1)
        return upload, {ROUTER: logits}

    def aggregate(server, uploads, num_examples):
        weights = component_weights(uploads[MIXTURE_WEIGHT], num_examples)
        old = server["params"]
        avg = {}
        for k, v in uploads.items():
            if k == MIXTURE_WEIGHT:
                continue
            c = member_of(k)
            # One member's tensor as a one-component routed mean: weights column c.
            avg[k] = routed_mean(v.unsqueeze(1), weights[:, c:c + 1], old[k].unsqueeze(0))[0]
        params, opt = server_opt.update(old, avg, server["opt"])
        return {"params": params, "opt": opt}

    def personalize(server, client_state):
        return {**server["params"], ROUTER: client_state[ROUTER]}

    alg = Algorithm(name=name, model=net, task=task, init=init, broadcast=broadcast, client_init=client_init,
                    loss=loss, client_final=client_final, aggregate=aggregate, personalize=personalize,
                    optimizer=LocalOptimizer(lr=lr, lr_of=lambda k: router_rate if k == ROUTER else lr,
                                             weight_decay=weight_decay),
                    private_keys=("router.",))
    total = sum(v.numel() for v in init_params.values())
    alg.hparams.update(param_counts={"models": total, "router": num_models, "uploaded": total + num_models},
                       report=router_report(lambda: seen.get("clusters")), optimal_router=optimal_router)
    return alg
