"""The benchmark workloads: FLoRAL on an MLP 784-200-10 (MNIST-sized clients) or on FLoRAL's CIFAR CNN
(Fashion-MNIST, ConvLoRA mixtures), C adaptors at rho; their FLOP counts.

Everything here is shared by the engines under test, so they train the same model on the same data.
"""

from __future__ import annotations

import json
import resource
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ...adapters import MixtureLinear
from ...algorithms import Algorithm, RouterConfig
from ...algorithms.floral import floral, wrap
from ...data import DataSpec, build_dataset
from ...data.federated import FederatedDataset
from ...models import build_model


@dataclass(frozen=True)
class Workload:
    """What is trained, on how many clients, how; the defaults are the issue's FLoRAL MNIST workload."""

    num_clients: int = 300
    clients_per_round: int = 30
    train_per_client: int = 200
    test_per_client: int = 33
    batch_size: int = 32
    local_epochs: int = 1
    eval_every: int = 10
    num_adaptors: int = 4
    rho: float = 0.01
    hidden: int = 200
    lr: float = 0.1
    router_lr: float = 0.1
    num_clusters: int = 4
    shift: str = "rotate"
    seed: int = 0
    #: the image source; mnist5k is resampled to the per-client sizes, other sources split their rows
    data: str = "mnist5k"
    model: str = "mlp"

    def data_spec(self) -> DataSpec:
        if self.data != "mnist5k":  # the official splits divided among the clients (200 / 33 rows for 300)
            return DataSpec(name=self.data, num_clients=self.num_clients, num_clusters=self.num_clusters,
                            shift=self.shift, seed=self.seed)
        return DataSpec(name="mnist5k", num_clients=self.num_clients, num_clusters=self.num_clusters,
                        shift=self.shift, train_per_client=self.train_per_client,
                        test_per_client=self.test_per_client, resample=True, seed=self.seed)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @staticmethod
    def from_json(text: str) -> Workload:
        return Workload(**json.loads(text))


def cnn_workload(num_clients: int = 300) -> Workload:
    """FLoRAL's CNN workload (``configs/floral/fashion_mnist_rotate_cnn.toml``): Fashion-MNIST Rotate, 300
    clients of 200 rows, 30 per round, batch 32, one epoch (7 steps), lr 0.03, router lr 0.1, C = 4 at 1%."""
    return Workload(num_clients=num_clients, lr=0.03, data="fashion_mnist", model="cifar_cnn")


def build_data(w: Workload) -> FederatedDataset:
    """mnist5k resampled to the workload's per-client sizes (the paper's full-MNIST sizes by default)."""
    return build_dataset(w.data_spec())


def build_floral(w: Workload, data: FederatedDataset) -> Algorithm:
    """Seeded MLP wrapped with C adaptors at rho, as the FLoRAL algorithm (preconditioned LoRA SGD)."""
    torch.manual_seed(w.seed)
    options = {"hidden": w.hidden} if w.model == "mlp" else {}
    model = build_model(w.model, data.input_shape, data.num_outputs, **options)
    mixture = wrap(model, w.num_adaptors, w.rho)
    return floral(mixture, data.objective, lr=w.lr, router=RouterConfig(lr=w.router_lr))


def linear_layers(model: nn.Module) -> list[tuple[int, int, int, int]]:
    """(in, out, adaptors, rank) of every Linear in forward order; plain Linears have no adaptors."""
    out = []
    for m in model.modules():
        if isinstance(m, MixtureLinear):
            out.append((m.base.in_features, m.base.out_features, m.num_adaptors, m.rank))
        elif isinstance(m, nn.Linear) and not any(m is getattr(p, "base", None) for p in model.modules()):
            out.append((m.in_features, m.out_features, 0, 0))
    return out


def flops_per_example(model: nn.Module) -> dict[str, float]:
    """Matmul FLOPs (2 per multiply-add) of one example: forward, and forward + backward for training.

    Forward of a layer: base 2*in*out plus adaptors 2*C*r*(in+out). Backward: the weight gradients
    cost the forward again; input gradients are needed by every layer but the first (the data needs
    none). Elementwise work (ReLU, softmax, the update, preconditioning) is not counted.
    """
    layers = linear_layers(model)
    fwd = [2 * i * o + 2 * c * r * (i + o) for i, o, c, r in layers]
    forward = float(sum(fwd))
    train = forward + forward + float(sum(fwd[1:]))
    return {"forward": forward, "train": train}


def conv_flops_per_example(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, float]:
    """Like ``flops_per_example`` for a model with convolutions, from one traced forward.

    A conv costs 2 * out_elements * in_channels * kh * kw per example (a Linear 2 * in * out); adaptors
    are folded into the kernels once per step, not per example, and are not counted. Training: weight
    gradients cost the forward again, input gradients are needed by every layer but the first.
    """
    costs: list[float] = []

    def hook(m: nn.Module, inputs, out) -> None:
        if isinstance(m, nn.Conv2d):
            kh, kw = m.kernel_size
            costs.append(2.0 * out[0].numel() * m.in_channels // m.groups * kh * kw)
        else:
            costs.append(2.0 * m.in_features * m.out_features)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    finally:
        for h in handles:
            h.remove()
    forward = float(sum(costs))
    return {"forward": forward, "train": 2 * forward + float(sum(costs[1:]))}


def matmul_gflops(threads: int, size: int = 1024, repeats: int = 20) -> float:
    """The machine's measured float32 GEMM rate (size^3, best of ``repeats``) at ``threads`` threads."""
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * size ** 3 / best / 1e9


def peak_rss_mb() -> float:
    """Peak resident memory of this process (MiB; Linux ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
