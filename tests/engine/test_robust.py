"""Upload screening and robust aggregation: rules against a plain reference, rejected clients, attacks, divergence."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from bouquet.app.config import load_experiment
from bouquet.app.experiment import build_algorithm
from bouquet.app.runner import run_one
from bouquet.data import build_dataset
from bouquet.engine.robust import (
    RobustConfig,
    attack_uploads,
    coordinate_median,
    malicious_clients,
    robust_uploads,
    shared_keys,
    trimmed_mean,
    update_norms,
)
from bouquet.engine.simulator import Simulator
from bouquet.engine.validation import upload_problem, validate_uploads

ROOT = Path(__file__).resolve().parents[2]


# -- the rules on hand-made uploads ---------------------------------------------------------------

def test_median_and_trimmed_mean_match_numpy() -> None:
    gen = torch.Generator().manual_seed(0)
    for num in (1, 2, 5, 10):
        x = torch.randn(num, 3, 4, generator=gen, dtype=torch.float64)
        assert torch.allclose(coordinate_median(x), torch.from_numpy(np.median(x.numpy(), axis=0)))
        for frac in (0.0, 0.1, 0.25, 0.45):
            cut = int(frac * num)
            ref = np.sort(x.numpy(), axis=0)[cut:num - cut].mean(axis=0)
            assert torch.allclose(trimmed_mean(x, frac), torch.from_numpy(ref))


def test_clip_scales_only_large_updates_and_leaves_other_keys() -> None:
    payload = {"w": torch.zeros(2, 2), "b": torch.ones(3)}
    up = {"w": torch.stack([torch.full((2, 2), v) for v in (0.5, -1.0, 100.0)]),
          "b": torch.ones(3, 3) + torch.tensor([[0.0], [1.0], [-50.0]]),
          "mix": torch.tensor([[0.2, 0.8], [0.5, 0.5], [1.0, 0.0]])}  # not in the payload: untouched
    assert shared_keys(up, payload) == ["w", "b"]
    norms = update_norms(up, payload)
    out = robust_uploads(up, payload, RobustConfig(aggregation="clip", clip_norm=2.0))
    new_norms = update_norms(out, payload)
    assert torch.equal(out["mix"], up["mix"])
    assert torch.equal(out["w"][0], up["w"][0]) and torch.equal(out["b"][0], up["b"][0])  # norm 1 < 2: exact
    assert torch.allclose(new_norms[1:], torch.full((2,), 2.0, dtype=torch.float64))
    # direction kept: the clipped update is a positive multiple of the original
    assert torch.allclose(out["w"][2] / out["w"][2].norm(), up["w"][2] / up["w"][2].norm())
    adaptive = robust_uploads(up, payload, RobustConfig(aggregation="clip"))
    assert torch.allclose(update_norms(adaptive, payload).max(), norms.median())
    low = robust_uploads(up, payload, RobustConfig(aggregation="clip", clip_quantile=0.25))
    assert torch.allclose(update_norms(low, payload), norms.clamp_max(torch.quantile(norms, 0.25)))


def test_robust_value_survives_any_weighted_mean() -> None:
    """Every client's row holds the robust value: FedAvg's n-weighted mean and a routed mean both return it."""
    from bouquet.algorithms.contract import weighted_mean

    payload = {"w": torch.zeros(4)}
    up = {"w": torch.tensor([[1.0] * 4, [2.0] * 4, [3.0] * 4, [1e6] * 4])}
    for rule, want in (("median", 2.5), ("trimmed_mean", 2.5)):
        out = robust_uploads(up, payload, RobustConfig(aggregation=rule, trim_fraction=0.25))
        for weights in (torch.tensor([1.0, 5.0, 2.0, 100.0]), torch.tensor([0.0, 0.0, 1.0, 0.0])):
            assert torch.allclose(weighted_mean(out["w"], weights), torch.full((4,), want))


def test_attack_hook_is_seeded_and_scales_updates() -> None:
    mask = malicious_clients(50, 0.2, seed=3)
    assert int(mask.sum()) == 10 and torch.equal(mask, malicious_clients(50, 0.2, seed=3))
    assert not torch.equal(mask, malicious_clients(50, 0.2, seed=4))
    payload = {"w": torch.ones(3)}
    ids = torch.arange(50)
    up = {"w": torch.ones(50, 3) + 0.01}
    out = attack_uploads(up, payload, ids, RobustConfig(attack="scale", attack_scale=1e3), 50, seed=3)
    delta = (out["w"] - 1).abs().amax(dim=1)
    assert torch.allclose(delta[mask], torch.full((10,), 10.0))
    assert torch.allclose(delta[~mask], torch.full((40,), 0.01))


def test_upload_problem_names_each_defect() -> None:
    expected = {"w": ((2, 3), torch.float32), "b": ((3,), torch.float32)}
    good = {"w": torch.zeros(2, 3), "b": torch.zeros(3)}
    assert upload_problem(good, expected) is None
    cases = {
        "missing keys": {"w": torch.zeros(2, 3)},
        "unexpected keys": {**good, "router.logits": torch.zeros(2)},
        "shape": {**good, "w": torch.zeros(3, 2)},
        "dtype": {**good, "b": torch.zeros(3, dtype=torch.float64)},
        "NaN or Inf": {**good, "b": torch.tensor([0.0, float("inf"), 0.0])},
        "above the limit": {**good, "w": torch.full((2, 3), 1e6)},
    }
    for why, upload in cases.items():
        problem = upload_problem(upload, expected, max_norm=1e3)
        assert problem is not None and why in problem, (why, problem)


def test_validate_uploads_reports_client_ids_and_reasons() -> None:
    ups = {"w": torch.tensor([[1.0], [float("nan")], [2.0], [5.0]])}
    losses = torch.tensor([0.1, 0.2, float("nan"), 0.3])
    norms = torch.tensor([1.0, 1.0, 1.0, 50.0], dtype=torch.float64)
    ok, report = validate_uploads(ups, losses, torch.tensor([3, 7, 9, 12]), norms, max_norm=10.0, round_idx=4)
    assert ok.tolist() == [True, False, False, False]
    assert report["rejected"] == [7, 9, 12]
    assert "NaN" in report["rejected_reasons"]["7"] and "diverged" in report["rejected_reasons"]["9"]
    assert "max_update_norm" in report["rejected_reasons"]["12"]


# -- in the engine ---------------------------------------------------------------------------------

def _digits_exp(**robust):
    exp = load_experiment(ROOT / "configs" / "mnist5k_iid.toml", [
        "data.name='digits'", "data.num_clients=20", "run.rounds=20", "run.clients_per_round=20",
        "run.eval_every=100", "run.checkpoint_every=0"])
    return replace(exp, robust=RobustConfig(**robust))


@pytest.fixture(scope="module")
def digits():
    return build_dataset(_digits_exp().data)


def _sim(exp, data, vectorized: bool) -> Simulator:
    alg, _ = build_algorithm(exp, data, "fedavg", 0)
    return Simulator(alg, data, replace(exp.run.spec(), vectorized=vectorized), robust=exp.robust)


@pytest.mark.parametrize("vectorized", [True, False])
def test_hostile_and_diverging_clients_are_dropped_in_both_engines(digits, vectorized: bool) -> None:
    exp = _digits_exp(attack="nan", attack_fraction=0.1, max_update_norm=1e4)
    sim = _sim(exp, digits, vectorized)
    # Client 5 diverges: NaN features make its training loss NaN.
    rows = slice(int(sim.train.offsets[5]), int(sim.train.offsets[5] + sim.train.sizes[5]))
    sim.train.x[rows] = float("nan")
    state = sim.init_state()
    attackers = malicious_clients(20, 0.1, 0).nonzero().flatten().tolist()
    for _ in range(2):
        state, rec = sim.run_round(state)
    assert sorted(rec["rejected"]) == sorted(attackers + [5])
    reasons = {int(c): why for c, why in rec["rejected_reasons"].items()}
    assert "diverged" in reasons[5] and all("NaN" in reasons[a] for a in attackers)
    assert rec["train_loss"] is not None and np.isfinite(rec["train_loss"])
    assert rec["client_train_loss"][5] is None
    assert all(torch.isfinite(v).all() for v in state.server["params"].values())


def test_rejections_reach_the_summary(digits) -> None:
    exp = replace(_digits_exp(attack="scale", attack_fraction=0.2, max_update_norm=50.0),
                  run=replace(_digits_exp().run, rounds=3))
    summary, records = run_one(exp, digits, "fedavg", 0)
    assert summary["rejected_updates"] == 3 * 4 == sum(len(r["rejected"]) for r in records)
    assert all("max_update_norm" in why for r in records for why in r["rejected_reasons"].values())


def test_clip_and_trimmed_mean_hold_accuracy_under_attack(digits) -> None:
    """20% of clients scale their update by 1e3: undefended FedAvg collapses, clip / trimmed mean stay close."""
    acc = {}
    for label, robust in {"clean": {}, "attacked": {"attack": "scale"},
                          "clip": {"attack": "scale", "aggregation": "clip"},
                          "trimmed_mean": {"attack": "scale", "aggregation": "trimmed_mean", "trim_fraction": 0.2},
                          }.items():
        summary, _ = run_one(_digits_exp(**robust), digits, "fedavg", 0)
        acc[label] = summary["last"]["mean"]
    assert acc["clean"] > 0.8 and acc["attacked"] < acc["clean"] - 0.3, acc
    assert abs(acc["clip"] - acc["clean"]) <= 0.02 and abs(acc["trimmed_mean"] - acc["clean"]) <= 0.02, acc
