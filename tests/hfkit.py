"""Helpers for the Hugging Face tests (imported by name, like flowerkit): token datasets and experiments."""

from __future__ import annotations

import torch

from bouquet.data.federated import ClientData, FederatedDataset


def token_data(objective: str, vocab: int, length: int = 8, num_clients: int = 3, num_outputs: int | None = None,
               seed: int = 0) -> FederatedDataset:
    """Random token windows (LM: next-token targets; classification: labels) for ``num_clients`` clients."""
    gen = torch.Generator().manual_seed(seed)
    clients, offset = [], 0
    for k in range(num_clients):
        x = torch.randint(0, vocab, (12, length), generator=gen)
        x[:, -2:] = -1 if objective != "language_modeling" else x[:, -2:]  # classification: padded texts
        if objective == "language_modeling":
            y = torch.roll(x, -1, dims=1)
            y[:, -1] = -100
        else:
            y = torch.randint(0, num_outputs, (12,), generator=gen)
        clients.append(ClientData(x_train=x[:8], y_train=y[:8], x_test=x[8:], y_test=y[8:], cluster=k % 2,
                                  train_ids=torch.arange(offset, offset + 8),
                                  test_ids=torch.arange(offset + 8, offset + 12)))
        offset += 12
    return FederatedDataset(name="tokens", clients=tuple(clients), input_shape=(length,),
                            num_outputs=num_outputs or vocab, objective=objective, num_clusters=2)


def lm_experiment(path: str, name: str, num_clients: int, vectorized: bool = True) -> dict:
    return {"name": "hf", "algorithms": [name], "data": {"name": "digits", "num_clients": num_clients},
            "model": {"name": "hf", "head": "causal_lm", "path": path},
            "run": {"rounds": 1, "clients_per_round": min(num_clients, 3), "batch_size": 4, "local_steps": 2,
                    "eval_every": 1, "vectorized": vectorized},
            "train": {"lr": 0.5}, "algo": {name: {"rank": 2}}}
