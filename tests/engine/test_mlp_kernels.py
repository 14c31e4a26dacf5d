"""The hand-batched MLP kernels compute the same local SGD as the client-by-client reference."""

from pathlib import Path

import pytest
import torch
from torch import nn

from bouquet.algorithms import RouterConfig
from bouquet.algorithms.ensemble import ensemble
from bouquet.algorithms.fedavg import fedavg
from bouquet.algorithms.floral import floral, wrap
from bouquet.algorithms.ifca import ifca
from bouquet.algorithms.local import local
from bouquet.algorithms.local_adaptor import local_adaptor
from bouquet.app.config import load_experiment
from bouquet.data import DataSpec, build_dataset
from bouquet.engine.autograd_training import train_sequential
from bouquet.engine.mlp_chain import RELU, Dense, parse_chain
from bouquet.engine.mlp_kernels import kernel_trainer
from bouquet.engine.simulator import RunSpec, Simulator
from bouquet.models import build_model


@pytest.fixture(scope="module")
def regression():
    return build_dataset(DataSpec(name="synthetic_mlp", num_clients=6, num_clusters=2, seed=1))


def _mlp(data, hidden=16):
    torch.manual_seed(0)
    return build_model("mlp", data.input_shape, data.num_outputs, hidden=hidden)


def _floral(data, weight_decay=0.0, rank=2, router=None, **kw):
    model = wrap(_mlp(data), 3, rank, adaptor_bias=True)
    # B = 0 at init would hide every B-dependent term of the backward: start from a random B.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(0, 0.1, generator=torch.Generator().manual_seed(3))
    return floral(model, data.objective, lr=0.1, weight_decay=weight_decay,
                  router=router or RouterConfig(lr=0.5, init_std=1.0), **kw)


BUILDS = {
    "floral": _floral,
    "floral_rank1": lambda d, weight_decay: _floral(d, weight_decay, rank=1),
    "floral_temperature_entropy": lambda d, weight_decay: _floral(
        d, weight_decay, router=RouterConfig(lr=0.5, temperature=0.5, entropy=0.05, init_std=1.0)),
    "floral_optimal": lambda d, weight_decay: _floral(d, weight_decay, optimal_router=True),
    "floral_plain_sgd": lambda d, weight_decay: _floral(d, weight_decay, precondition=False),
    "local_adaptor": lambda d, weight_decay: local_adaptor(wrap(_mlp(d), 1, 2, adaptor_bias=True), d.objective,
                                                           lr=0.1, lora_lr=0.2, weight_decay=weight_decay),
    # skip_below = 0: every member runs (the kernels do not implement the official skip of small pi)
    "ensemble": lambda d, weight_decay: ensemble(_mlp(d), d.objective, 3, lr=0.1, weight_decay=weight_decay,
                                                 router=RouterConfig(lr=0.5, temperature=0.7, entropy=0.02,
                                                                     init_std=1.0), skip_below=0.0),
    "ensemble_optimal": lambda d, weight_decay: ensemble(_mlp(d), d.objective, 2, lr=0.1, optimal_router=True,
                                                         weight_decay=weight_decay, skip_below=0.0,
                                                         router=RouterConfig()),
    "fedavg": lambda d, weight_decay: fedavg(_mlp(d), d.objective, lr=0.1, weight_decay=weight_decay),
    "ifca": lambda d, weight_decay: ifca(_mlp(d), d.objective, 2, lr=0.1, weight_decay=weight_decay),
    "local": lambda d, weight_decay: local(_mlp(d), d.objective, lr=0.1, weight_decay=weight_decay),
}


def _double(tree):
    return {k: v.double() if v.is_floating_point() else v for k, v in tree.items()}


def _check_equal(alg, data, first_round):
    """Kernels against the reference in float64: the same arithmetic up to rounding, with no float32 near-ties
    (a ReLU input near 0 that flips sign between the two summation orders moved one lora_A entry by 1e-4 on
    an AMD EPYC, where the same float32 test passed on another CPU)."""
    trainable, payload, private, batches = (_double(t) for t in first_round(data, alg))
    trainer = kernel_trainer(alg.model, alg.objective, alg.local_update, alg.loss_spec)
    assert trainer is not None
    got, got_loss = trainer(trainable, payload, private, batches)
    ref, ref_loss = train_sequential(alg.loss, alg.local_update, trainable, payload, private, batches)
    assert set(got) == set(ref)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-10, atol=1e-12, msg=lambda m, k=k: f"{k}: {m}")
        assert got[k].shape == trainable[k].shape
    torch.testing.assert_close(got_loss, ref_loss, rtol=1e-10, atol=1e-12)
    return trainable, got


@pytest.mark.parametrize("name", sorted(BUILDS))
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_kernels_equals_sequential(padded_digits, first_round, name, weight_decay):
    """Forward, backward, preconditioning, router, weight decay and padding steps match the reference."""
    alg = BUILDS[name](padded_digits, weight_decay=weight_decay)
    if alg.local_update.plain_sgd() is None:  # weight decay with the router exempt: the kernels must decline
        assert kernel_trainer(alg.model, alg.objective, alg.local_update, alg.loss_spec) is None
        return
    steps = first_round(padded_digits, alg)[3]["w"].sum(dim=2).gt(0).sum(dim=1)
    assert steps.min() < steps.max()  # some clients really have padding steps
    trainable, got = _check_equal(alg, padded_digits, first_round)
    trained = [k for k in got if alg.local_update.plain_sgd().rate(k) != 0]
    assert trained and all(not torch.equal(got[k], trainable[k]) for k in trained)  # every one was trained


def test_kernels_regression(regression, first_round):
    """Squared-error loss (FLoRAL's synthetic_mlp) matches too."""
    torch.manual_seed(0)
    model = wrap(build_model("mlp", regression.input_shape, regression.num_outputs, hidden=20), 2, 1,
                 adaptor_bias=True)
    alg = floral(model, regression.objective, lr=0.03, router=RouterConfig(lr=0.1, init_std=1.0))
    _check_equal(alg, regression, first_round)


def test_kernels_leaves_inputs_untouched(padded_digits, first_round):
    alg = _floral(padded_digits)
    trainable, payload, private, batches = first_round(padded_digits, alg)
    before = {k: v.clone() for k, v in {**trainable, **payload, **private}.items()}
    kernel_trainer(alg.model, alg.objective, alg.local_update, alg.loss_spec)(trainable, payload, private, batches)
    for k, v in {**trainable, **payload, **private}.items():
        assert torch.equal(v, before[k]), k


def test_simulator_rounds_equal_with_and_without_kernels(padded_digits, rounds_with_and_without_kernels):
    """Whole rounds (training, aggregation, router state) agree between the kernels and vmap + autograd."""
    rounds_with_and_without_kernels(lambda: _floral(padded_digits), padded_digits,
                                    {"clients_per_round": 5, "batch_size": 8},
                                    ("hand-batched kernels", "vmap + autograd"), rounds=3)


def test_parse_chain_layers_and_unsupported_models(padded_digits):
    layers = parse_chain(wrap(_mlp(padded_digits), 3, 2, adaptor_bias=True))
    assert [type(x).__name__ if isinstance(x, Dense) else x for x in layers] == ["Dense", RELU, "Dense"]
    assert layers[0].weight == "model.1.base.weight" and layers[0].num == 3 and layers[0].rank == 2
    assert parse_chain(_mlp(padded_digits))[2].weight == "3.weight"
    assert parse_chain(build_model("cifar_cnn", (3, 32, 32), 10)) is None  # convolutions: generic trainer
    assert parse_chain(nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2))) is None
    assert parse_chain(nn.Sequential(nn.ReLU(), nn.Linear(4, 2))) is None


def test_noisy_router_keeps_the_generic_trainer(padded_digits):
    """Router noise and floor are not in the MLP kernels' closed form (the conv kernels take them): they
    decline the declared loss, so vmap + autograd runs."""
    alg = _floral(padded_digits, router=RouterConfig(lr=0.5, noise=1.0, floor=0.01))
    assert alg.loss_spec is not None and not alg.loss_spec.closed_form
    sim = Simulator(alg, padded_digits, RunSpec(rounds=1, clients_per_round=2, batch_size=8))
    assert sim.training_path == "vmap + autograd"


def test_inputs_with_extra_dims_fall_back(padded_digits):
    """A chain without Flatten fed [K, S, B, T, in] inputs hands the batches to the fallback trainer."""
    model = nn.Sequential(nn.Linear(4, 3))
    alg = fedavg(model, "classification", lr=0.1)
    calls = []
    trainer = kernel_trainer(model, alg.objective, alg.local_update, alg.loss_spec,
                            fallback=lambda *args: calls.append(args) or ("fallback", None))
    batches = {"x": torch.randn(2, 1, 3, 5, 4), "y": torch.zeros(2, 1, 3, dtype=torch.long), "w": torch.ones(2, 1, 3)}
    assert trainer({}, {}, {}, batches)[0] == "fallback" and len(calls) == 1


def test_run_hand_batched_switch_reaches_the_simulator():
    """`run.hand_batched = false` in a config gives the vmap + autograd trainer (for A/B runs)."""
    demo = Path(__file__).resolve().parents[2] / "configs" / "demo.toml"
    assert load_experiment(demo, ["run.hand_batched=false"]).run.spec().hand_batched is False
    assert load_experiment(demo).run.spec().hand_batched is True
