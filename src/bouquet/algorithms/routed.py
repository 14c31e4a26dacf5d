"""The client side shared by the routed mixtures (FLoRAL, Ensemble): a private router mixes C components.

Server state: the mixture's parameters without the router; client state: the router logits
(private). Clients upload their parameters and ``mixture_weight`` = softmax(logits), never the logits;
the server aggregates component c with weights p(k|c) proportional to n_k * pi_kc (``routing``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad

from ..adapters import mixture_weights
from .contract import ChooseByLoss, Objective, Params, task_loss
from .revival import TWIN, initial_revival, share_twin_prior, without_twin
from .routing import MIXTURE_WEIGHT, ORACLE_OFF, ROUTER, RouterConfig, initial_logits
from .server_opt import ServerOptimizer


def entropy(pi: Tensor) -> Tensor:
    """Shannon entropy of a mixture (0 log 0 = 0)."""
    return -(pi * torch.log(pi.clamp_min(1e-30))).sum()


@dataclass(frozen=True)
class RoutedFunctions:
    """init, broadcast, client_init, loss, client_final, personalize and the evaluation forward of a
    routed mixture, the router's local learning rate (0 when the router is not trained by SGD: the oracle, or
    chosen by loss) and, for a router chosen by the components' losses, how to batch that choice."""

    init: Callable
    broadcast: Callable
    client_init: Callable
    loss: Callable
    client_final: Callable
    personalize: Callable
    forward: Callable[[Params, Tensor], Tensor]
    router_rate: float
    #: the logits ``init`` drew last (``{ROUTER: [N, C]}``), for the router-drift report
    initial: dict
    #: the router chosen from the components' losses (``select = "loss"`` or ``"em"``), for a batched engine
    choose_by_loss: ChooseByLoss | None = None

    def functions(self) -> dict:
        """The contract functions, as keyword arguments of ``Algorithm``."""
        return {"init": self.init, "broadcast": self.broadcast, "client_init": self.client_init,
                "loss": self.loss, "client_final": self.client_final, "personalize": self.personalize,
                "forward": self.forward, "choose_by_loss": self.choose_by_loss}


def routed_functions(net: nn.Module, objective: Objective, rc: RouterConfig, num: int, optimal_router: bool,
                     init_params: Params, server_opt: ServerOptimizer) -> RoutedFunctions:
    """The routed client side for a mixture ``net`` whose forward takes ``pi``."""
    dtype = next(iter(init_params.values())).dtype

    initial: dict = {}

    def init(gen, clusters):
        params = {k: v.clone() for k, v in init_params.items()}
        logits = initial_logits(clusters, num, optimal_router, dtype, gen, rc.init_std)
        initial[ROUTER] = logits.clone()
        server = {"params": params, "opt": server_opt.init(params)}
        if rc.revive:
            server["revival"] = initial_revival(num)
        return server, {ROUTER: logits}

    def broadcast(server):
        if rc.revive:  # the twins of a split, for the clients' priors (C integers)
            return {**server["params"], TWIN: server["revival"]["twin"]}
        return dict(server["params"])

    def routed_loss(logits, params, batch):
        pi = mixture_weights(logits, training=True, noise_std=rc.noise, floor=rc.floor, temperature=rc.temperature)
        out = functional_call(net, params, (batch["x"],), {"pi": pi}, strict=False)
        value = task_loss(out, batch["y"], batch["w"], objective)
        if rc.entropy:
            value = value - rc.entropy * entropy(torch.softmax(logits / rc.temperature, dim=-1))
        return value

    def refresh(logits, params, batches):
        # Router-only SGD on the model just downloaded: the router catches up with components that moved
        # since this client's last visit before they are trained (and averaged) under its weights.
        num_batches = batches["w"].shape[0]
        for i in range(rc.steps):
            batch = {k: v[i % num_batches] for k, v in batches.items()}
            logits = logits - rc.lr * grad(routed_loss)(logits, params, batch)
        return logits.detach()

    def component_losses(logits, params, batches):
        # Each component alone (pi one-hot) on this round's training rows: its mean loss, and the row count.
        flat = {k: v.flatten(0, 1) for k, v in batches.items()}
        eye = torch.eye(num, dtype=logits.dtype, device=logits.device)
        losses = torch.stack([task_loss(functional_call(net, params, (flat["x"],), {"pi": eye[c]}, strict=False),
                                        flat["y"], flat["w"], objective) for c in range(num)])
        return losses.detach().to(logits.dtype), flat["w"].sum().to(logits.dtype)

    def em_from_losses(logits, losses, n):
        # EM responsibilities: p(c|k) proportional to pi_c exp(-n_k loss_c) (the prior is the client's last
        # mixture), then mixed with `explore` of the uniform mixture; logits returned so that the forward's
        # softmax(logits / temperature) is exactly that mixture.
        log_post = torch.log_softmax(logits / rc.temperature, dim=-1) - n * losses
        post = (1 - rc.explore) * torch.softmax(log_post, dim=-1) + rc.explore / num
        return rc.temperature * torch.log(post.clamp_min(1e-30))

    def choice_from_losses(logits, losses):
        # Loss-selected router: one-hot on the component of lowest loss on this round's training rows.
        # Components tied within float noise (identical at the start) go to the client's largest logit:
        # its last choice, or its random initial preference, which breaks the symmetry between them.
        tied = losses <= losses.min() + 1e-6 * (1 + losses.min().abs())
        pick = torch.where(tied, logits, torch.full_like(logits, -torch.inf)).argmax()
        return torch.where(torch.arange(num, device=logits.device) == pick, 0.0, ORACLE_OFF).to(logits.dtype)

    def selected(logits, losses, n, twin=None):
        logits = share_twin_prior(logits, twin, rc.temperature)  # the two halves of a split at equal prior
        return choice_from_losses(logits, losses) if rc.select == "loss" else em_from_losses(logits, losses, n)

    def candidates(payload):
        # Component c alone: the model with a one-hot router on c (exact with no floor: softmax of ORACLE_OFF
        # is 0), so the losses equal component_losses' with pi = e_c.
        payload = without_twin(payload)
        like = next(iter(payload.values()))
        onehot = torch.where(torch.eye(num, dtype=torch.bool, device=like.device), 0.0, ORACLE_OFF).to(dtype)
        return {**{k: v.expand(num, *v.shape) for k, v in payload.items()}, ROUTER: onehot}

    def pick(payload, client_state, losses, batches):
        n = batches["w"].sum().to(losses.dtype)
        logits = selected(client_state[ROUTER], losses.to(dtype), n.to(dtype), payload.get(TWIN))
        return {**without_twin(payload), ROUTER: logits}

    def client_init(payload, client_state, batches):
        trainable = without_twin(payload)
        if not optimal_router:
            logits = client_state[ROUTER]
            if rc.select in ("loss", "em"):
                logits = selected(logits, *component_losses(logits, trainable, batches), payload.get(TWIN))
            elif rc.steps:
                logits = refresh(logits, payload, batches)
            trainable[ROUTER] = logits
        return trainable

    def loss(trainable, payload, client_state, batch):
        logits = trainable.get(ROUTER, client_state[ROUTER])
        return routed_loss(logits, {k: v for k, v in trainable.items() if k != ROUTER}, batch)

    def client_final(trainable, payload, client_state, num_examples, batches):
        logits = trainable.get(ROUTER, client_state[ROUTER])
        upload = {k: v for k, v in trainable.items() if k != ROUTER}
        upload[MIXTURE_WEIGHT] = torch.softmax(logits, dim=-1)  # p(c|k) as in the paper: no noise, floor, temp
        return upload, {ROUTER: logits}

    def personalize(server, client_state):
        return {**server["params"], ROUTER: client_state[ROUTER]}

    def forward(params, x):
        pi = mixture_weights(params[ROUTER], training=False, floor=rc.floor, temperature=rc.temperature)
        return functional_call(net, params, (x,), {"pi": pi}, strict=False)

    fixed = optimal_router or rc.select != "gradient"  # set at client_init, not trained by SGD
    # a router chosen by the components' losses, declared so that an engine may batch them (a floor would make
    # the one-hot candidates' pi differ from e_c)
    by_loss = not optimal_router and rc.select != "gradient" and rc.floor == 0
    return RoutedFunctions(init, broadcast, client_init, loss, client_final, personalize, forward,
                           0.0 if fixed else rc.lr, initial, ChooseByLoss(candidates, pick) if by_loss else None)
