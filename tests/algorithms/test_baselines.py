"""FedAvg, Local and FedAvg+FT learn; the server optimizers do what their formulas say."""

import pytest
import torch

from bouquet.algorithms.server_opt import server_adam, server_sgd
from bouquet.app.config import parse_experiment
from bouquet.app.runner import run_one
from bouquet.data import build_dataset

RAW = {
    "name": "b",
    "data": {"name": "digits", "num_clients": 8, "num_clusters": 2, "shift": "label_shift", "seed": 0},
    "model": {"name": "mlp", "hidden": 32},
    "run": {"rounds": 30, "clients_per_round": 4, "batch_size": 16, "eval_every": 30},
    "train": {"lr": 0.1},
}


@pytest.fixture(scope="module")
def results():
    exp = parse_experiment(RAW)
    data = build_dataset(exp.data)
    return {name: run_one(exp, data, name, seed=0)[0] for name in ("fedavg", "local", "fedavg_ft")}


def test_each_baseline_learns(results):
    for name, res in results.items():
        assert res["last"]["mean"] > 0.3, (name, res["last"])  # chance is 0.1


def test_label_shift_hurts_the_single_global_model(results):
    """Two clusters with shifted labels: a single model cannot fit both; personal models can."""
    assert results["local"]["last"]["mean"] > results["fedavg"]["last"]["mean"] + 0.1
    assert results["fedavg_ft"]["last"]["mean"] > results["fedavg"]["last"]["mean"] + 0.1


def test_server_sgd_is_fedavg_at_lr_one():
    opt = server_sgd(1.0)
    params = {"w": torch.ones(3)}
    new, _ = opt.update(params, {"w": torch.zeros(3)}, opt.init(params))
    assert torch.equal(new["w"], torch.zeros(3))
    half = server_sgd(0.5)
    new, _ = half.update(params, {"w": torch.zeros(3)}, half.init(params))
    assert torch.allclose(new["w"], torch.full((3,), 0.5))


def test_server_momentum_accumulates():
    opt = server_sgd(1.0, momentum=0.5)
    params = {"w": torch.zeros(1)}
    state = opt.init(params)
    params, state = opt.update(params, {"w": torch.ones(1) * -1.0}, state)  # g = 1 -> w = -1
    params, state = opt.update(params, {"w": params["w"] - 1.0}, state)  # g = 1, m = 1.5 -> w = -2.5
    assert float(params["w"]) == pytest.approx(-2.5)


def test_server_adam_first_step_moves_by_lr():
    opt = server_adam(lr=0.01)
    params = {"w": torch.tensor([1.0, -1.0])}
    new, state = opt.update(params, {"w": torch.tensor([0.0, 0.0])}, opt.init(params))
    assert torch.allclose(new["w"], torch.tensor([0.99, -0.99]), atol=1e-6)
    assert float(state["step"]) == 1
