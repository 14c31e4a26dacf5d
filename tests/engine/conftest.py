"""Fixtures shared by the local-training tests (the vmap trainer and the chain kernels)."""

import pytest
import torch
from torch.func import vmap

from bouquet.data import DataSpec, build_dataset
from bouquet.engine.batching import SplitArrays, round_batches
from bouquet.engine.simulator import Simulator
from bouquet.engine.spec import RunSpec


@pytest.fixture(scope="module")
def padded_digits():
    # Dirichlet sizes: clients have different numbers of local steps, so some steps are all padding.
    return build_dataset(DataSpec(name="digits", num_clients=10, num_clusters=2, shift="label_shift",
                                  partition="dirichlet", alpha=0.5, seed=2))


def _first_round(data, alg, batch_size=8, steps=None):
    arrays = SplitArrays.from_dataset(data, "train")
    ids = torch.arange(data.num_clients)
    index, weight = round_batches(arrays, ids, seed=0, round_idx=1, batch_size=batch_size, steps=steps)
    batches = arrays.gather(index, weight)
    server, clients = alg.init(torch.Generator().manual_seed(0), data.clusters)
    payload = alg.broadcast(server)
    private = {k: v[ids] for k, v in clients.items()}
    trainable = vmap(alg.client_init, in_dims=(None, 0, 0), randomness="different")(payload, private, batches)
    return trainable, payload, private, batches


@pytest.fixture
def first_round():
    """``first_round(data, alg, batch_size=8, steps=None)`` -> a trainer's inputs for round 1 of every client:
    (trainable, payload, private, batches)."""
    return _first_round


def _rounds_with_and_without_kernels(make_alg, data, spec: dict, paths: tuple[str, str], rounds: int):
    """Run ``rounds`` rounds with the hand-batched kernels and without; check the training paths are the
    expected ones and that server parameters, routers and the evaluation agree."""
    runs = []
    for hand, path in zip((True, False), paths, strict=True):
        sim = Simulator(make_alg(), data, RunSpec(rounds=rounds, hand_batched=hand, **spec))
        assert sim.training_path == path
        state = sim.init_state()
        for _ in range(rounds):
            state, _ = sim.run_round(state)
        runs.append((state, sim.evaluate(state)["mean"]))
    (a, acc_a), (b, acc_b) = runs
    for k in a.server["params"]:
        torch.testing.assert_close(a.server["params"][k], b.server["params"][k], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(a.clients["router.logits"], b.clients["router.logits"], rtol=1e-4, atol=1e-5)
    assert acc_a == pytest.approx(acc_b, abs=1e-6)


@pytest.fixture
def rounds_with_and_without_kernels():
    return _rounds_with_and_without_kernels
