"""IFCA (Ghosh et al., 2020): C cluster models; each client trains, uploads and is evaluated with one of them.

Each round the server broadcasts all C models; a client picks the one of lowest loss on its round's
training batches (all C losses computed, argmin turned into a one-hot and used as a weighted sum,
so the choice is vmappable), trains it, and uploads only that model plus its one-hot choice
(``cluster_weight``); model c is averaged over the clients that chose it, weighted by n_k.

Evaluation uses the model the client chose the last time it took part (stored in client state
``ifca.choice``; chosen on training data, never on test data). A client that never took part has no
choice yet and is evaluated with model 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ..adapters import independent_copies
from ..checks import require
from .contract import Algorithm, ChooseByLoss, LossSpec, Objective, task_loss
from .local_update import local_sgd
from .registry import BuildContext, register
from .routing import router_report
from .server_opt import ServerOptimizer, server_sgd

CHOICE = "ifca.choice"
CLUSTER_WEIGHT = "cluster_weight"


def select(stacked: dict[str, Tensor], onehot: Tensor) -> dict[str, Tensor]:
    """The model picked by ``onehot`` [C] from parameters stacked over models [C, ...]."""
    return {k: torch.tensordot(onehot.to(v.dtype), v, dims=1) for k, v in stacked.items()}


def ifca(model: nn.Module, objective: Objective, num_models: int, *, lr: float,
         server_opt: ServerOptimizer | None = None, weight_decay: float = 0.0, name: str = "ifca") -> Algorithm:
    """IFCA with ``num_models`` independently initialised copies of ``model``."""
    copies = independent_copies(model, num_models)
    template = copies[0]
    names = [k for k, _ in template.named_parameters()]
    stacked0 = {k: torch.stack([dict(m.named_parameters())[k].detach().clone() for m in copies]) for k in names}
    server_opt = server_opt or server_sgd(1.0)
    dtype = stacked0[names[0]].dtype

    def init(gen, clusters):
        params = {k: v.clone() for k, v in stacked0.items()}
        return {"params": params, "opt": server_opt.init(params)}, {CHOICE: torch.zeros(len(clusters), num_models,
                                                                                         dtype=dtype)}

    def broadcast(server):
        return dict(server["params"])

    def pick(payload, client_state, losses, batches=None):
        onehot = (torch.arange(num_models, device=losses.device) == losses.argmin()).to(dtype)
        return {**select(payload, onehot), CHOICE: onehot}

    def client_init(payload, client_state, batches):
        x = batches["x"].flatten(0, 1)
        y = batches["y"].flatten(0, 1)
        w = batches["w"].flatten(0, 1)
        losses = torch.stack([task_loss(functional_call(template, {k: v[c] for k, v in payload.items()}, (x,)),
                                        y, w, objective) for c in range(num_models)])
        return pick(payload, client_state, losses)

    def loss(trainable, payload, client_state, batch):
        params = {k: v for k, v in trainable.items() if k != CHOICE}
        return task_loss(functional_call(template, params, (batch["x"],)), batch["y"], batch["w"], objective)

    def client_final(trainable, payload, client_state, num_examples, batches):
        upload = {k: v for k, v in trainable.items() if k != CHOICE}
        upload[CLUSTER_WEIGHT] = trainable[CHOICE]
        return upload, {CHOICE: trainable[CHOICE]}

    def aggregate(server, uploads, num_examples):
        weights = num_examples.to(dtype)[:, None] * uploads[CLUSTER_WEIGHT]  # [K, C]
        denom = weights.sum(dim=0)
        old = server["params"]
        avg = {}
        for k, v in uploads.items():
            if k == CLUSTER_WEIGHT:
                continue
            total = torch.tensordot(weights.T, v, dims=1)  # [C, ...]
            shape = denom.shape + (1,) * (v.dim() - 1)
            avg[k] = torch.where((denom > 0).reshape(shape), total / denom.clamp_min(1e-30).reshape(shape), old[k])
        params, opt = server_opt.update(old, avg, server["opt"])
        return {"params": params, "opt": opt}

    def personalize(server, client_state):
        h = client_state[CHOICE]
        first = (torch.arange(num_models, device=h.device) == 0).to(h.dtype)
        h = torch.where(h.sum() > 0, h, first)
        return select(server["params"], h)

    one = sum(v[0].numel() for v in stacked0.values())
    return Algorithm(name=name, model=template, objective=objective, init=init, broadcast=broadcast,
                     client_init=client_init, loss=loss, client_final=client_final, aggregate=aggregate,
                     personalize=personalize,
                     local_update=local_sgd(lr, lr_of=lambda k: 0.0 if k == CHOICE else lr,
                                            weight_decay_rate=weight_decay),
                     private_keys=("ifca.",), loss_spec=LossSpec(),
                     param_counts={"models": one * num_models, "uploaded": one + num_models},
                     report=router_report(CHOICE), choose_by_loss=ChooseByLoss(dict, pick))


@dataclass(frozen=True)
class IfcaOptions:
    """IFCA: the number of cluster models (None = the dataset's number of clusters)."""

    #: number of cluster models (none: the dataset's number of clusters)
    num_components: int | None = None

    def check(self, s: str) -> None:
        require(self.num_components is None or self.num_components >= 1, f"{s}.num_components",
                "none or an integer >= 1", self.num_components)


@register("ifca", IfcaOptions, "IFCA: C cluster models, each client uses the one of lowest training loss")
def build_ifca(model: nn.Module, ctx: BuildContext, options: IfcaOptions) -> Algorithm:
    return ifca(model, ctx.objective, options.num_components or ctx.num_clusters, lr=ctx.train.lr,
                server_opt=ctx.server_optimizer(), weight_decay=ctx.train.weight_decay)
