"""The hand-batched kernels cannot lie: every registered algorithm trains the same with and without them,
and a ``loss_spec`` that does not describe the loss is caught at run time (warning, autograd fallback)."""

import warnings
from dataclasses import replace

import pytest
import torch

import bouquet as bq
from bouquet.algorithms import ALGORITHMS, task_loss
from bouquet.app.config import parse_experiment
from bouquet.app.runner import simulator
from bouquet.engine.kernel_check import CheckedTrainer, KernelMismatchWarning, update_mismatch

SMALL = {
    "name": "kernels", "data": {"name": "digits", "num_clients": 8, "num_clusters": 2, "shift": "label_shift"},
    "model": {"name": "mlp", "hidden": 16},
    "run": {"rounds": 2, "clients_per_round": 4, "batch_size": 16, "eval_every": 2, "vectorized": True},
    "train": {"lr": 0.1},
    "algo": {"potara": {"federated_rounds": 1, "rank": 2}, "fedit": {"rank": 2}},
}


@pytest.fixture(scope="module")
def digits():
    exp = parse_experiment(SMALL)
    return bq.build_dataset(exp.data)


def _train(name, data, hand_batched):
    raw = {**SMALL, "run": {**SMALL["run"], "hand_batched": hand_batched}}
    sim, _ = simulator(parse_experiment(raw), data, name, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", KernelMismatchWarning)  # every registered algorithm's spec is honest
        state, records = sim.run()
    return sim, state, records


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_every_registered_algorithm_trains_alike_with_and_without_kernels(digits, name):
    sim_k, with_kernels, rec_k = _train(name, digits, True)
    sim_a, without, rec_a = _train(name, digits, False)
    assert sim_a.training_path == "vmap + autograd"
    uses_kernels = sim_k.training_path == "hand-batched kernels"
    # the MLP kernels run exactly for algorithms that declare a closed-form loss (no router noise, floor or
    # member skip: those only the conv kernels take) and a plain-SGD step
    spec = sim_k.alg.loss_spec
    declared = spec is not None and spec.closed_form and sim_k.alg.local_update.plain_sgd() is not None
    assert uses_kernels == declared, (name, sim_k.training_path)
    for k, v in without.server.get("params", {}).items():
        torch.testing.assert_close(with_kernels.server["params"][k], v, rtol=1e-4, atol=1e-5,
                                   msg=lambda m, k=k: f"{name} {k}: {m}")
    for k, v in without.clients.items():
        torch.testing.assert_close(with_kernels.clients[k], v, rtol=1e-4, atol=1e-5,
                                   msg=lambda m, k=k: f"{name} {k}: {m}")
    assert rec_k[-1]["eval"]["mean"] == pytest.approx(rec_a[-1]["eval"]["mean"], abs=1e-6)


def test_most_baselines_of_the_floral_tables_use_the_kernels(digits):
    # The learned-router Ensemble runs the official noisy router (not the MLP kernels' closed form); its oracle does.
    fast = [n for n in ("fedavg", "local", "local_adaptor", "floral", "ensemble_opt", "ifca", "fedper")
            if simulator(parse_experiment(SMALL), digits, n, 0)[0].checked is not None]
    assert len(fast) == 7


def test_a_wrong_loss_spec_is_caught_and_autograd_takes_over(digits):
    """FedAvg with a label-smoothed loss that still declares the plain loss: the kernels would train the
    wrong objective, so the first-step check warns and the run equals the autograd run."""
    torch.manual_seed(0)
    model = bq.build_model("mlp", digits.input_shape, digits.num_outputs, hidden=16)
    honest = bq.fedavg(model, digits.objective, lr=0.1)

    def smoothed(trainable, payload, client_state, batch):
        out = honest.apply(trainable, batch["x"])
        plain = task_loss(out, batch["y"], batch["w"], "classification")
        uniform = -(torch.log_softmax(out, -1).mean(-1) * batch["w"]).sum() / batch["w"].sum().clamp_min(1)
        return 0.7 * plain + 0.3 * uniform

    liar = replace(honest, loss=smoothed, name="liar")
    spec = bq.RunSpec(rounds=2, clients_per_round=4, batch_size=16)
    sim = bq.Simulator(liar, digits, spec)
    with pytest.warns(KernelMismatchWarning, match="liar"):
        state, _ = sim.run()
    assert "disagreed" in sim.training_path
    reference, _ = bq.Simulator(liar, digits, replace(spec, hand_batched=False)).run()
    for k, v in reference.server["params"].items():
        torch.testing.assert_close(state.server["params"][k], v, rtol=1e-5, atol=1e-6)


def test_update_mismatch_tolerates_float_noise_and_matching_divergence():
    start = {"w": torch.zeros(3)}
    step = {"w": torch.tensor([1.0, -2.0, 0.5])}
    assert update_mismatch(start, step, {"w": step["w"] * (1 + 1e-6)}, 1e-4) is None
    assert "relative difference" in update_mismatch(start, step, {"w": step["w"] * 1.01}, 1e-4)
    nan = {"w": torch.tensor([float("nan"), 1.0, 1.0])}
    assert update_mismatch(start, nan, nan, 1e-4) is None
    assert "non-finite" in update_mismatch(start, nan, step, 1e-4)


def _step_by_cancellation(trainable, shared, private, batches):
    """An update computed the ill-conditioned way: (x + 1e-3) - x loses 6% of 1e-3 in float32 at x = 1000."""
    x = shared["x"]
    return {"w": trainable["w"] + ((x + 1e-3) - x)}, torch.zeros(trainable["w"].shape[0])


def _step_directly(trainable, shared, private, batches):
    return {"w": trainable["w"] + 1e-3 * torch.ones_like(shared["x"])}, torch.zeros(trainable["w"].shape[0])


def _check(kernels, reference):
    trainable = {"w": torch.zeros(4, 3)}
    shared = {"x": torch.full((3,), 1000.0)}
    batches = {"w": torch.ones(4, 2, 5)}
    checked = CheckedTrainer(kernels, reference, "toy")
    return checked, checked.check(trainable, shared, {}, batches)


def test_the_check_runs_in_float64_so_float32_rounding_in_an_ill_conditioned_step_is_not_a_mismatch():
    start = {"w": torch.zeros(4, 3)}
    shared = {"x": torch.full((3,), 1000.0)}
    in_float32 = update_mismatch(start, _step_directly(start, shared, {}, {})[0],
                                 _step_by_cancellation(start, shared, {}, {})[0], 1e-4)
    assert in_float32 is not None and "relative difference" in in_float32  # a float32 check would reject it
    checked, trusted = _check(_step_directly, _step_by_cancellation)
    assert trusted and checked.reason is None


def test_the_check_falls_back_to_the_native_dtype_when_the_code_pins_float32():
    seen = []

    def pinned(trainable, shared, private, batches):
        seen.append(trainable["w"].dtype)
        if trainable["w"].dtype != torch.float32:
            raise RuntimeError("expected scalar type Float but found Double")
        return _step_directly(trainable, shared, private, batches)

    checked, trusted = _check(pinned, _step_directly)
    assert trusted and seen == [torch.float64, torch.float32]
    wrong = lambda t, s, p, b: ({"w": t["w"] + 2e-3}, torch.zeros(4))  # noqa: E731
    with pytest.warns(KernelMismatchWarning, match="toy"):
        checked, trusted = _check(wrong, _step_directly)
    assert not trusted and "relative difference" in checked.reason
