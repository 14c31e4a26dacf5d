"""Federated LoRA methods: frozen base never sent, bytes per method, vectorized == sequential, they learn."""

from dataclasses import replace

import pytest
import torch

from bouquet.algorithms.contract import payload_nbytes
from bouquet.app.config import parse_experiment
from bouquet.app.experiment import build_algorithm
from bouquet.app.runner import run_one
from bouquet.data import build_dataset
from bouquet.engine.simulator import Simulator

METHODS = ("fedit", "fedit_ft", "ffa_lora", "fedsa_lora", "local_lora", "ditto", "apfl")
RAW = {
    "name": "lora",
    "data": {"name": "digits", "num_clients": 6, "num_clusters": 2, "shift": "label_shift", "seed": 0,
             "train_per_client": 32, "test_per_client": 40},
    "model": {"name": "mlp", "hidden": 16},
    "run": {"rounds": 3, "clients_per_round": 6, "batch_size": 16, "eval_every": 3},
    "train": {"lr": 0.2},
    "algo": {"fedit": {"rank": 2}, "ffa_lora": {"rank": 2}, "fedsa_lora": {"rank": 2}, "local_lora": {"rank": 2},
             "fedit_ft": {"rank": 2}, "ditto": {"rank": 2}, "apfl": {"rank": 2}},
}


@pytest.fixture(scope="module")
def setup():
    exp = parse_experiment(RAW)
    return exp, build_dataset(exp.data)


def _run(exp, data, name, vectorized, rounds=2):
    alg, _ = build_algorithm(exp, data, name, 0)
    sim = Simulator(alg, data, replace(exp.run.spec(), vectorized=vectorized), robust=exp.robust)
    state = sim.init_state()
    records = []
    for _ in range(rounds):
        state, rec = sim.run_round(state)
        records.append(rec)
    return alg, sim, state, records


@pytest.mark.parametrize("name", METHODS)
def test_vectorized_and_sequential_engines_agree(setup, name):
    exp, data = setup
    _, sim_v, st_v, rec_v = _run(exp, data, name, True)
    _, sim_s, st_s, rec_s = _run(exp, data, name, False)
    for k, v in st_v.server["params"].items():
        assert torch.allclose(v, st_s.server["params"][k], atol=1e-4), (name, k)
    for k, v in st_v.clients.items():
        assert torch.allclose(v, st_s.clients[k], atol=1e-4), (name, k)
    ev_v, ev_s = sim_v.evaluate(st_v), sim_s.evaluate(st_s)
    assert ev_v["mean"] == pytest.approx(ev_s["mean"], abs=1e-6)
    assert rec_v[-1]["bytes_up"] == rec_s[-1]["bytes_up"]


def test_payloads_hold_only_adaptors_and_bytes_follow_the_method(setup):
    exp, data = setup
    sizes = {}
    for name in ("fedit", "ffa_lora", "fedsa_lora", "local_lora"):
        alg, sim, state, records = _run(exp, data, name, True, rounds=1)
        payload = alg.broadcast(state.server)
        assert all(k.endswith((".lora_A", ".lora_B")) for k in payload), name
        sizes[name] = (payload_nbytes(payload), records[0]["bytes_up"])
        # the frozen base stays in the template, untouched by training
        for k, p in alg.model.named_parameters():
            assert not p.requires_grad, k
    alg, *_ = _run(exp, data, "fedit", True, rounds=1)
    init = {k: v for k, v in alg.model.named_parameters() if k.endswith((".lora_A", ".lora_B"))}
    a_bytes = sum(v.numel() * 4 for k, v in init.items() if k.endswith("lora_A"))
    b_bytes = sum(v.numel() * 4 for k, v in init.items() if k.endswith("lora_B"))
    assert sizes["fedit"] == (a_bytes + b_bytes, 6 * (a_bytes + b_bytes))
    assert sizes["ffa_lora"] == (b_bytes, 6 * b_bytes)
    assert sizes["fedsa_lora"] == (a_bytes, 6 * a_bytes)
    assert sizes["local_lora"] == (0, 0)


def test_ffa_keeps_a_at_its_init_and_fedsa_keeps_b_private(setup):
    exp, data = setup
    alg, _, state, _ = _run(exp, data, "ffa_lora", True)
    params = alg.personalize(state.server, {})
    for k, v in alg.model.named_parameters():
        if k.endswith("lora_A"):
            assert torch.equal(params[k], v)
    alg, _, state, _ = _run(exp, data, "fedsa_lora", True)
    assert all(k.startswith("local.") and k.endswith("lora_B") for k in state.clients)
    assert not any(k.endswith("lora_B") for k in state.server["params"])


def test_ditto_with_a_huge_mu_keeps_personal_near_global(setup):
    exp, data = setup
    exp = replace(exp, algo={**exp.algo, "ditto": replace(exp.algo["ditto"], mu=1.0)})
    alg, _, state, _ = _run(exp, data, "ditto", True, rounds=3)
    gap = sum(float((state.clients["personal." + k] - v).pow(2).sum()) for k, v in state.server["params"].items())
    exp0 = replace(exp, algo={**exp.algo, "ditto": replace(exp.algo["ditto"], mu=0.0)})
    alg0, _, state0, _ = _run(exp0, data, "ditto", True, rounds=3)
    gap0 = sum(float((state0.clients["personal." + k] - v).pow(2).sum()) for k, v in state0.server["params"].items())
    assert gap < gap0


def test_apfl_alpha_stays_in_unit_interval_and_private(setup):
    exp, data = setup
    exp = replace(exp, algo={**exp.algo, "apfl": replace(exp.algo["apfl"], alpha_lr=5.0)})
    alg, _, state, _ = _run(exp, data, "apfl", True, rounds=2)
    alpha = state.clients["apfl.alpha"]
    assert alpha.shape == (6,) and bool(((alpha >= 0) & (alpha <= 1)).all())
    assert not bool((alpha == 0.5).all())  # it learned
    assert "apfl.alpha" in alg.private_keys


def test_methods_learn_on_label_shifted_digits_from_a_pretrained_base():
    raw = {**RAW, "run": {**RAW["run"], "rounds": 20, "eval_every": 20}, "train": {"lr": 0.05},
           "pretrain": {"rows": 800, "epochs": 20, "lr": 0.1, "batch_size": 32}}
    exp = parse_experiment(raw)
    data = build_dataset(exp.data)
    scores = {n: run_one(exp, data, n, 0)[0]["last"]["mean"] for n in ("fedit", "local_lora", "fedit_ft")}
    assert all(v > 0.3 for v in scores.values()), scores  # chance is 0.1
    # two clusters with shifted labels: one global LoRA cannot fit both, local ones can
    assert scores["local_lora"] > scores["fedit"]
