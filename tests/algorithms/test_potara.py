"""Potara: schedule, delta-W and factor merges, engines agree, switches, oracles, diagnostics, falsification."""

from dataclasses import replace

import pytest
import torch
from torch.func import vmap

from bouquet.algorithms.potara import PotaraOptions
from bouquet.app.config import ConfigError, parse_experiment
from bouquet.app.experiment import build_algorithm
from bouquet.data import build_dataset, carve_validation
from bouquet.engine.batching import SplitArrays
from bouquet.engine.lambda_oracle import GRID, closed_form_lambdas, lambda_scores, merge_diagnostics, oracle_lambdas
from bouquet.engine.simulator import Simulator
from bouquet.merging.closed_form import merge_delta_w

RAW = {
    "name": "potara",
    "data": {"name": "digits", "num_clients": 4, "num_clusters": 2, "shift": "label_shift", "seed": 0,
             "train_per_client": 32, "test_per_client": 40},
    "model": {"name": "mlp", "hidden": 16},
    "run": {"rounds": 4, "clients_per_round": 4, "batch_size": 16, "eval_every": 4},
    "train": {"lr": 0.1},
    "algo": {"potara": {"rank": 2, "federated_rounds": 2}},
}


def _exp(**potara):
    raw = {**RAW, "algo": {"potara": {**RAW["algo"]["potara"], **potara}}}
    return parse_experiment(raw)


def _run(exp, data, rounds=4, vectorized=True):
    alg, _ = build_algorithm(exp, data, "potara", 0)
    sim = Simulator(alg, data, replace(exp.run.spec(), vectorized=vectorized), robust=exp.robust)
    state = sim.init_state()
    records = []
    for _ in range(rounds):
        state, rec = sim.run_round(state)
        records.append(rec)
    return alg, sim, state, records


@pytest.fixture(scope="module")
def data():
    return build_dataset(_exp().data)


def test_schedule_federated_rounds_then_one_download_then_silence(data):
    alg, _, state, records = _run(_exp(), data)
    lora_bytes = sum(v.numel() * 4 for v in state.server["params"].values())
    assert [r["bytes_up"] for r in records] == [4 * lora_bytes, 4 * lora_bytes, 0, 0]
    assert [r["bytes_down"] for r in records] == [4 * lora_bytes, 4 * lora_bytes, 4 * lora_bytes, 0]
    # every client holds the final federated model after the download round
    for k, v in state.server["params"].items():
        assert torch.allclose(state.clients["fedcopy." + k], v.expand_as(state.clients["fedcopy." + k]))


def test_personalize_is_the_delta_w_merge_with_the_closed_form_lambda(data):
    alg, sim, state, _ = _run(_exp(), data)
    lam = closed_form_lambdas(alg, state.server, state.clients)
    assert lam.shape == (4,) and bool(((lam >= 0) & (lam <= 1)).all())
    personal = vmap(lambda cs: alg.personalize(state.server, cs))(state.clients)
    local = {k.removeprefix("local."): v for k, v in state.clients.items() if k.startswith("local.")}
    for c in range(4):
        expect = merge_delta_w(state.server["params"], {k: v[c] for k, v in local.items()}, lam[c])
        for k, v in expect.items():
            assert torch.allclose(personal[k][c], v, atol=1e-6)
    # lambda = 1 is the federated model's output, lambda = 0 the local model's
    x = sim.test.x[:5]
    cs0 = {k: v[0] for k, v in state.clients.items()}
    out1 = alg.apply(alg.merging.merge(state.server, cs0, torch.tensor(1.0)), x)
    assert torch.allclose(out1, alg.apply(state.server["params"], x), atol=1e-5)
    out0 = alg.apply(alg.merging.merge(state.server, cs0, torch.tensor(0.0)), x)
    assert torch.allclose(out0, alg.apply({k: v[0] for k, v in local.items()}, x), atol=1e-5)


@pytest.mark.parametrize("estimator", ["laplace_fisher", "sgd_fisher", "dispersion", "paper", "data"])
def test_vectorized_and_sequential_engines_agree(data, estimator):
    exp = _exp(estimator=estimator)
    _, sim_v, st_v, _ = _run(exp, data, rounds=3)
    _, sim_s, st_s, _ = _run(exp, data, rounds=3, vectorized=False)
    for k, v in st_v.clients.items():
        assert torch.allclose(v, st_s.clients[k], rtol=1e-3, atol=1e-5), k
    assert sim_v.evaluate(st_v)["mean"] == pytest.approx(sim_s.evaluate(st_s)["mean"], abs=1e-6)


def test_layer_granularity_and_federated_local_init(data):
    alg, _, state, _ = _run(_exp(granularity="layer", local_init="federated"), data, rounds=3)
    lam = closed_form_lambdas(alg, state.server, state.clients)
    assert lam.shape == (4, 2)  # two LoRA layers
    # the local LoRA started from the final federated model in round 3 and trained one round from there
    for k, v in state.server["params"].items():
        moved = (state.clients["local." + k] - v).abs().max()
        assert 0 < float(moved) < float(v.abs().max() + 1)


def test_bias_term_lowers_lambda(data):
    with_bias = _run(_exp(bias_term=True), data)
    without = _run(_exp(bias_term=False), data)
    lam_b = closed_form_lambdas(with_bias[0], with_bias[2].server, with_bias[2].clients)
    lam_n = closed_form_lambdas(without[0], without[2].server, without[2].clients)
    assert bool((lam_b <= lam_n + 1e-6).all())


def test_oracle_on_a_validation_split_from_train_rows(data):
    train, held = carve_validation(data, 0.25, seed=0)
    val = SplitArrays.from_dataset(held, "test")
    for c_full, c_train in zip(data.clients, train.clients, strict=True):
        assert c_train.num_train == 24 and torch.equal(c_train.x_test, c_full.x_test)
    assert val.sizes.tolist() == [8] * 4
    for k, c in enumerate(data.clients):  # validation rows are training rows the client no longer trains on
        rows = val.x[int(val.offsets[k]):int(val.offsets[k]) + 8]
        assert all(any(torch.equal(r, t) for t in c.x_train) for r in rows)
        assert not any(any(torch.equal(r, t) for t in train.clients[k].x_train) for r in rows[:2])
    alg, _, state, _ = _run(_exp(), train)
    scores = lambda_scores(alg, state.server, state.clients, val)
    assert scores.shape == (4, len(GRID))
    best = oracle_lambdas(scores)
    picked = scores.gather(1, (best / 0.05).round().long()[:, None]).squeeze(1)
    assert torch.allclose(picked.double(), scores.max(1).values.double())


def test_oracle_tie_break_prefers_merging():
    scores = torch.tensor([[1.0] * 21, [0.0] * 20 + [1.0]])
    assert oracle_lambdas(scores).tolist() == [0.5, 1.0]


def test_options_are_validated():
    with pytest.raises(ConfigError, match="algo.potara.estimator"):
        _exp(estimator="magic")
    with pytest.raises(ConfigError, match="algo.potara.local_init"):
        _exp(local_init="random")
    with pytest.raises(ConfigError, match="algo.potara.federated_rounds"):
        _exp(federated_rounds=0)


# --- the falsification test: lambda must follow the data, not the optimizer ------------------------------

FIXED_TASK = {
    "name": "potara_falsify",
    "data": {"name": "digits", "num_clients": 6, "num_clusters": 1, "shift": "none", "partition": "dirichlet",
             "alpha": 0.5, "seed": 0, "train_per_client": 60, "test_per_client": 40},
    "model": {"name": "mlp", "hidden": 32},
    "pretrain": {"mode": "centralized", "rows": 500, "epochs": 10, "lr": 0.1},
    "run": {"rounds": 8, "clients_per_round": 6, "batch_size": 16, "eval_every": 8},
    "train": {"lr": 0.1},
    "algo": {"potara": {"rank": 4, "federated_rounds": 4, "local_init": "federated"}},
}
#: doubling the batch or halving the learning rate may move lambda by at most this fraction of its mean
TOLERANCE = 0.25


def _lambdas(estimator: str, lr: float, batch_size: int) -> torch.Tensor:
    raw = {**FIXED_TASK, "run": {**FIXED_TASK["run"], "batch_size": batch_size}, "train": {"lr": lr},
           "algo": {"potara": {**FIXED_TASK["algo"]["potara"], "estimator": estimator}}}
    exp = parse_experiment(raw)
    data = build_dataset(exp.data)
    alg, sim, state, _ = _run(exp, data, rounds=exp.run.rounds)
    return closed_form_lambdas(alg, state.server, state.clients)


def _moves(estimator: str) -> tuple[float, float]:
    """Mean |delta lambda| over clients / mean lambda, for 2x batch size and for lr / 2."""
    base = _lambdas(estimator, 0.1, 16)
    scale = float(base.mean())
    return (float((_lambdas(estimator, 0.1, 32) - base).abs().mean()) / scale,
            float((_lambdas(estimator, 0.05, 16) - base).abs().mean()) / scale)


def test_default_estimator_lambda_does_not_follow_batch_size_or_learning_rate():
    default = PotaraOptions().estimator
    batch_move, lr_move = _moves(default)
    assert batch_move < TOLERANCE and lr_move < TOLERANCE, (default, batch_move, lr_move)


def test_sgd_stationary_estimator_fails_the_falsification_test():
    # lambda = (eta / 2B) / <dtheta^2>_F: the optimizer's noise scale, so it moves with B and eta
    batch_move, lr_move = _moves("sgd_fisher")
    assert batch_move > TOLERANCE and lr_move > TOLERANCE, (batch_move, lr_move)


def test_factor_merge_space_and_lambda_diagnostics(data):
    alg, sim, state, _ = _run(_exp(merge_space="factor", estimator="paper"), data)
    lam = closed_form_lambdas(alg, state.server, state.clients)
    personal = vmap(lambda cs: alg.personalize(state.server, cs))(state.clients)
    local = {k.removeprefix("local."): v for k, v in state.clients.items() if k.startswith("local.")}
    for k, v in state.server["params"].items():
        expect = lam.view(-1, *[1] * v.dim()) * v + (1 - lam.view(-1, *[1] * v.dim())) * local[k]
        assert torch.allclose(personal[k], expect, atol=1e-6)
    train, held = carve_validation(data, 0.25, seed=0)
    alg, _, state, _ = _run(_exp(estimator="data"), train)
    diag = merge_diagnostics(alg, state.server, state.clients, SplitArrays.from_dataset(held, "test"))
    for key in ("a", "b", "c", "d2", "bias", "eta_over_2b", "lambda", "lambda_nll_oracle", "lambda_acc_oracle"):
        assert len(diag[key]) == 4, key
    nll = torch.tensor(diag["val_nll"])
    assert nll.shape == (4, len(GRID))
    assert torch.allclose(torch.tensor(diag["lambda_nll_oracle"], dtype=torch.float64),
                          torch.tensor(GRID, dtype=torch.float64)[nll.argmin(1)])
    b, d2 = torch.tensor(diag["b"]), torch.tensor(diag["d2"])
    assert bool((b > 0).all()) and bool((d2 > 0).all())
    assert diag["eta_over_2b"] == [pytest.approx(0.1 / 32)] * 4
