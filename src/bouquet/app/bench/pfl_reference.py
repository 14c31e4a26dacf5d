"""The reference loop: FLoRAL written the way PFLlib-style code trains, in plain PyTorch.

Each client object owns its own ``nn.Module`` (a deep copy of the model, router logits included)
and builds a fresh ``torch.optim.SGD`` every round; a round is a Python loop over the sampled
clients, each looping over its mini-batches with ``zero_grad / backward / step``. Data are
in-memory tensors (no DataLoader). Same maths as ``bouquet.algorithms.floral``: separate learning
rates for base, adaptors and router, preconditioned LoRA gradients, base averaged by n_k, adaptor c
by n_k * pi_kc. It is a speed baseline, not a second implementation to test against.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor

from ...adapters import MixtureModel, param_role, precondition_lora_grads
from ...data.federated import ClientData

ROUTER = "router.logits"


class Client:
    """One client: its data, its own model and its private router (PFLlib's clientbase)."""

    def __init__(self, cid: int, data: ClientData, model: MixtureModel, lr: float, router_lr: float,
                 batch_size: int, seed: int):
        self.cid = cid
        self.x_train, self.y_train = data.x_train.float(), data.y_train
        self.x_test, self.y_test = data.x_test.float(), data.y_test
        self.model = copy.deepcopy(model)
        self.lr, self.router_lr, self.batch_size = lr, router_lr, batch_size
        self.gen = torch.Generator().manual_seed(seed * 100003 + cid)

    @property
    def num_train(self) -> int:
        return int(self.x_train.shape[0])

    def set_parameters(self, global_params: dict[str, Tensor]) -> None:
        """Copy the global base and adaptors into this client's model (its router stays)."""
        with torch.no_grad():
            for name, p in self.model.named_parameters():
                if name in global_params:
                    p.copy_(global_params[name])

    def _optimizer(self) -> torch.optim.SGD:
        groups: dict[str, list] = {"base": [], "adaptor": [], "router": []}
        for name, p in self.model.named_parameters():
            groups[param_role(name)].append(p)
        return torch.optim.SGD([{"params": groups["base"], "lr": self.lr},
                                {"params": groups["adaptor"], "lr": self.lr},
                                {"params": groups["router"], "lr": self.router_lr}], lr=self.lr)

    def train(self) -> float:
        """One local epoch of mini-batch SGD; returns the mean training loss."""
        model, opt = self.model, self._optimizer()
        named = dict(model.named_parameters())
        order = torch.randperm(self.num_train, generator=self.gen)
        total, steps = 0.0, 0
        for start in range(0, self.num_train, self.batch_size):
            idx = order[start:start + self.batch_size]
            opt.zero_grad()
            pi = torch.softmax(model.router.logits, dim=-1)
            loss = F.cross_entropy(model(self.x_train[idx], pi=pi), self.y_train[idx])
            loss.backward()
            with torch.no_grad():  # ScaledGD preconditioning of every LoRA pair, as in FLoRAL
                grads = {k: p.grad for k, p in named.items() if p.grad is not None}
                for k, g in precondition_lora_grads(named, grads).items():
                    named[k].grad.copy_(g)
            opt.step()
            total, steps = total + float(loss.detach()), steps + 1
        return total / max(steps, 1)

    def upload(self) -> tuple[dict[str, Tensor], Tensor]:
        """Base and adaptor parameters, and pi = softmax(router logits)."""
        params = {k: p.detach().clone() for k, p in self.model.named_parameters() if k != ROUTER}
        return params, torch.softmax(self.model.router.logits.detach(), dim=-1)

    @torch.no_grad()
    def test(self) -> tuple[int, int]:
        """(correct, total) of this client's personalized model on its test rows."""
        pi = torch.softmax(self.model.router.logits, dim=-1)
        pred = self.model(self.x_test, pi=pi).argmax(dim=-1)
        return int((pred == self.y_test).sum()), int(self.y_test.shape[0])


class Server:
    """Holds the global model; samples clients, broadcasts, trains them in turn, aggregates, evaluates."""

    def __init__(self, clients: list[Client], model: MixtureModel, clients_per_round: int, seed: int):
        self.clients = clients
        self.global_params = {k: p.detach().clone() for k, p in model.named_parameters() if k != ROUTER}
        self.clients_per_round = clients_per_round
        self.gen = torch.Generator().manual_seed(seed)

    def round(self) -> float:
        chosen = torch.randperm(len(self.clients), generator=self.gen)[:self.clients_per_round].tolist()
        uploads, weights, losses = [], [], []
        for cid in sorted(chosen):
            client = self.clients[cid]
            client.set_parameters(self.global_params)
            losses.append(client.train())
            params, pi = client.upload()
            uploads.append(params)
            weights.append((client.num_train, pi))
        self.aggregate(uploads, weights)
        return sum(losses) / len(losses)

    def aggregate(self, uploads: list[dict[str, Tensor]], weights: list[tuple[int, Tensor]]) -> None:
        """Base: n_k-weighted mean; adaptor c (A and B separately): weights n_k * pi_kc."""
        n = torch.tensor([float(w[0]) for w in weights])
        pi = torch.stack([w[1] for w in weights])  # [K, C]
        comp = n[:, None] * pi
        for name in self.global_params:
            stacked = torch.stack([u[name] for u in uploads])
            if param_role(name) == "adaptor":
                w = comp / comp.sum(dim=0).clamp_min(1e-30)
                self.global_params[name] = (w.T.reshape(*w.T.shape, *([1] * (stacked.dim() - 2)))
                                            * stacked.transpose(0, 1)).sum(dim=1)
            else:
                self.global_params[name] = torch.tensordot(n / n.sum(), stacked, dims=1)

    def evaluate(self) -> float:
        """Accuracy over every client's test rows, each with the global model and its own router."""
        correct = total = 0
        for client in self.clients:
            client.set_parameters(self.global_params)
            c, t = client.test()
            correct, total = correct + c, total + t
        return correct / max(total, 1)
