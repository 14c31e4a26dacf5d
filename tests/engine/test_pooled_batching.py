"""Index-pooled clients in the engine: the same batches, rounds and evaluations as the materialised layout,
without a copy of any client's rows."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from bouquet.algorithms import RouterConfig
from bouquet.algorithms.contract import Finetune
from bouquet.algorithms.fedavg import fedavg
from bouquet.algorithms.floral import floral, wrap
from bouquet.data import FederatedDataset, PooledClients
from bouquet.engine.batching import SplitArrays, padded_split, round_batches
from bouquet.engine.client_work import client_view, evaluate_client
from bouquet.engine.simulator import Simulator
from bouquet.engine.spec import RunSpec
from bouquet.models import build_model


def _pooled(num_clients: int, pool: int = 60, seed: int = 0) -> FederatedDataset:
    """Ragged label-shift clients (3 to 12 training rows, 1 to 3 test rows) resampling a float16 pool."""
    gen = torch.Generator().manual_seed(seed)
    x_pool = torch.randn(pool, 1, 4, 4, generator=gen).half()
    y_pool = torch.randint(0, 5, (pool,), generator=gen)
    cut = pool * 3 // 4
    n_tr = torch.randint(3, 13, (num_clients,), generator=gen).tolist()
    n_te = torch.randint(1, 4, (num_clients,), generator=gen).tolist()
    rows_tr = [torch.randint(0, cut, (n,), generator=gen) for n in n_tr]
    rows_te = [torch.randint(cut, pool, (n,), generator=gen) for n in n_te]
    cluster = torch.arange(num_clients) % 2
    shift = [(y_pool[r] + int(c)) % 5 for r, c in zip(rows_tr, cluster, strict=True)]
    shift_te = [(y_pool[r] + int(c)) % 5 for r, c in zip(rows_te, cluster, strict=True)]
    clients = PooledClients.build(x_pool, cluster, rows_tr, shift, rows_te, shift_te)
    return FederatedDataset("pooled", clients, (1, 4, 4), 5, "classification", 2)


@pytest.fixture(scope="module")
def layouts():
    pooled = _pooled(24)
    return pooled, replace(pooled, clients=tuple(pooled.clients))  # the same clients, each with its own copies


def test_pooled_arrays_gather_the_materialised_batches(layouts):
    pooled, copies = layouts
    for split in ("train", "test"):
        a, b = SplitArrays.from_dataset(pooled, split), SplitArrays.from_dataset(copies, split)
        assert a.rows is not None and b.rows is None and a.x.shape[0] == 60
        assert torch.equal(a.sizes, b.sizes) and torch.equal(a.offsets, b.offsets)
        ids = torch.tensor([0, 5, 7, 23])
        index, weight = round_batches(a, ids, seed=1, round_idx=2, batch_size=4, epochs=2)
        index_b, weight_b = round_batches(b, ids, seed=1, round_idx=2, batch_size=4, epochs=2)
        assert torch.equal(index, index_b) and torch.equal(weight, weight_b)
        for got, want in ((a.gather(index, weight), b.gather(index, weight)),
                          (a.gather(*padded_split(a, ids)), b.gather(*padded_split(b, ids)))):
            assert all(torch.equal(got[k], want[k]) for k in ("x", "y", "w"))
        one_a, one_b = client_view(a, 5), client_view(b, 5)
        assert torch.equal(one_a.gather(*padded_split(one_a, torch.tensor([0])))["x"],
                           one_b.gather(*padded_split(one_b, torch.tensor([0])))["x"])


def _floral(data):
    torch.manual_seed(0)
    model = build_model("mlp", data.input_shape, data.num_outputs, hidden=8)
    return floral(wrap(model, 2, 0.5), data.objective, lr=0.1, router=RouterConfig(lr=0.1))


def _fedavg_ft(data):
    torch.manual_seed(0)
    model = build_model("mlp", data.input_shape, data.num_outputs, hidden=8)
    return fedavg(model, data.objective, lr=0.1, finetune=Finetune(1, 0.05))


@pytest.mark.parametrize(("make", "vectorized"), [(_floral, "auto"), (_fedavg_ft, True)])
def test_rounds_and_evaluation_match_the_materialised_layout(layouts, make, vectorized):
    runs = []
    for data in layouts:
        spec = RunSpec(rounds=2, clients_per_round=4, batch_size=4, eval_every=2, eval_chunk=5, vectorized=vectorized)
        state, records = Simulator(make(data), data, spec, seed=2).run()
        runs.append((state, records))
    (a, rec_a), (b, rec_b) = runs
    assert rec_a == rec_b  # losses, bytes and the evaluation (per client) exactly alike
    assert all(torch.equal(a.server["params"][k], b.server["params"][k]) for k in a.server["params"])
    assert all(torch.equal(a.clients[k], b.clients[k]) for k in a.clients)


def test_one_client_evaluated_alone_matches(layouts):
    """The Flower node's path (``client_work``) on a pooled client gives the simulator's score."""
    pooled, _ = layouts
    alg = _floral(pooled)
    sim = Simulator(alg, pooled, RunSpec(rounds=1, clients_per_round=6, batch_size=4, eval_chunk=5))
    state, _ = sim.run_round(sim.init_state())
    scores = sim.client_scores(state)
    train, test = client_view(sim.train, 7), client_view(sim.test, 7)
    private = {k: v[7] for k, v in state.clients.items()}
    score, _, n = evaluate_client(alg, sim.spec, 0, train, test, state.server, private, 7, state.round)
    assert n == int(scores.num_examples[7]) and score == pytest.approx(float(scores.score[7]), abs=1e-6)


def test_many_pooled_clients_keep_one_pool():
    """The engine's arrays hold the pool once: their feature storage does not grow with the clients."""
    few, many = _pooled(10), _pooled(20_000)
    for split in ("train", "test"):
        a, b = SplitArrays.from_dataset(few, split), SplitArrays.from_dataset(many, split)
        assert a.x.shape == b.x.shape == (60, 1, 4, 4) and a.x.dtype == torch.float32
        assert b.rows is not None and len(b.rows) == len(b.y) == int(many.train_sizes().sum() if split == "train"
                                                                     else many.test_sizes().sum())
