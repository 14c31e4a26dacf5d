"""FLoRAL's synthetic regression tasks: a shared model plus a rank-1 perturbation per cluster.

As in the official generator (``synthetic.py``), the teacher's W_k is DIM_IN x DIM_IN for both tasks,
so synthetic_mlp's teacher hidden layer is 10 wide (the student MLP's is 20) and W_out ~ N(0, 1/10).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from bouquet.data.federated import ClientData, FederatedDataset

DIM_IN = 10
LINEAR_OUT = 3  # the model is nn.Linear(10, 3): targets are the first 3 of 10 outputs of x W_k + b
MLP_HIDDEN = 20  # the student model's hidden width (the paper's MLP 10-20-1)
TEACHER_HIDDEN = DIM_IN  # the official teacher: W is dim x dim, so ReLU(x W_k + b) is 10 wide
MLP_OUT = 1
RANK = 1
SCALE = 2.0  # W_k = W + 2 u_c v_c^T
LINEAR_PARAMS = DIM_IN * LINEAR_OUT + LINEAR_OUT  # 33
MLP_PARAMS = DIM_IN * MLP_HIDDEN + MLP_HIDDEN + MLP_HIDDEN * MLP_OUT + MLP_OUT  # 241
SAMPLES_PER_PARAM = {"synthetic_linear": 0.25, "synthetic_mlp": 0.5}


def samples_per_client(name: str) -> int:
    """n per client = round(ratio * #params of the task's model): 8 for linear, 120 for MLP."""
    params = LINEAR_PARAMS if name == "synthetic_linear" else MLP_PARAMS
    return round(SAMPLES_PER_PARAM[name] * params)


def split_sizes(n: int, test_fraction: float) -> tuple[int, int]:
    """(train, test) sizes: test = floor(n * test_fraction), the rest is train (8 -> 7/1, 120 -> 96/24)."""
    n_test = math.floor(n * test_fraction + 1e-9)
    return n - n_test, n_test


def _normal(gen: torch.Generator, *shape: int, var: float) -> Tensor:
    return torch.randn(*shape, generator=gen, dtype=torch.float64) * math.sqrt(var)


def synthetic_parameters(name: str, num_clusters: int, seed: int) -> dict[str, Tensor]:
    """Shared W [10, 10], b (and W_out [10, 1]) and per-cluster u_c, v_c, all N(0, 1/d) except v ~ N(0, 1/r);
    float64. d = 10 throughout, as in the official generator."""
    gen = torch.Generator().manual_seed(seed)
    width = TEACHER_HIDDEN
    params = {
        "W": _normal(gen, DIM_IN, width, var=1.0 / DIM_IN),
        "b": _normal(gen, width, var=1.0 / DIM_IN),
        "u": _normal(gen, num_clusters, DIM_IN, RANK, var=1.0 / DIM_IN),
        "v": _normal(gen, num_clusters, width, RANK, var=1.0 / RANK),
    }
    if name == "synthetic_mlp":
        params["W_out"] = _normal(gen, TEACHER_HIDDEN, MLP_OUT, var=1.0 / TEACHER_HIDDEN)
    return params


def cluster_weight(params: dict[str, Tensor], cluster: int) -> Tensor:
    """W_c = W + 2 u_c v_c^T."""
    return params["W"] + SCALE * params["u"][cluster] @ params["v"][cluster].T


def synthetic_targets(name: str, params: dict[str, Tensor], cluster: int, x: Tensor) -> Tensor:
    """Noise-free targets of cluster `cluster` for inputs x (float64)."""
    h = x @ cluster_weight(params, cluster) + params["b"]
    if name == "synthetic_linear":
        return h[:, :LINEAR_OUT]
    return torch.relu(h) @ params["W_out"]


def build_synthetic(name: str, num_clients: int, num_clusters: int, seed: int, test_fraction: float,
                    train_per_client: int | None = None, test_per_client: int | None = None,
                    fraction: float = 1.0, min_train: int = 10) -> FederatedDataset:
    """Clients with x ~ N(0, I_10) and targets of their cluster's model; ids number train rows, then test."""
    n = samples_per_client(name)
    n_train, n_test = split_sizes(n, test_fraction)
    if train_per_client is not None:
        n_train = train_per_client
    elif fraction < 1.0:
        n_train = min(n_train, max(min_train, math.floor(fraction * n_train + 0.5)))
    if test_per_client is not None:
        n_test = test_per_client
    params = synthetic_parameters(name, num_clusters, seed)
    clients = []
    for k in range(num_clients):
        c = k % num_clusters
        gen = torch.Generator().manual_seed(seed * 1_000_003 + 7919 * (k + 1))
        x = torch.randn(n_train + n_test, DIM_IN, generator=gen, dtype=torch.float64)
        y = synthetic_targets(name, params, c, x)
        x, y = x.float(), y.float()
        clients.append(ClientData(
            x_train=x[:n_train], y_train=y[:n_train], x_test=x[n_train:], y_test=y[n_train:], cluster=c,
            train_ids=torch.arange(k * n_train, (k + 1) * n_train),
            test_ids=num_clients * n_train + torch.arange(k * n_test, (k + 1) * n_test),
        ))
    out_dim = LINEAR_OUT if name == "synthetic_linear" else MLP_OUT
    meta = {
        "dim_in": DIM_IN, "dim_out": out_dim, "hidden": MLP_HIDDEN if name == "synthetic_mlp" else None,
        "teacher_hidden": TEACHER_HIDDEN if name == "synthetic_mlp" else None,
        "rank": RANK, "perturbation_scale": SCALE, "samples_per_client": n, "train_per_client": n_train,
        "test_per_client": n_test,
        "model_params": LINEAR_PARAMS if name == "synthetic_linear" else MLP_PARAMS,
        "samples_per_param": SAMPLES_PER_PARAM[name], "noise": 0.0,
    }
    return FederatedDataset(name=name, clients=tuple(clients), input_shape=(DIM_IN,), num_outputs=out_dim,
                            objective="regression", num_clusters=num_clusters, meta=meta)
