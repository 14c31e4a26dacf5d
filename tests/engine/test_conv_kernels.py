"""The batched conv kernels compute the same local SGD as the client-by-client reference and a PFLlib-style loop."""

from dataclasses import replace

import pytest
import torch
from torch import nn

from bouquet.algorithms import RouterConfig, task_loss
from bouquet.algorithms.ensemble import ensemble
from bouquet.algorithms.fedavg import fedavg
from bouquet.algorithms.floral import floral, wrap
from bouquet.algorithms.ifca import ifca
from bouquet.algorithms.local_adaptor import local_adaptor
from bouquet.app.bench.pfl_reference import Client, Server
from bouquet.data import DataSpec, build_dataset
from bouquet.engine.autograd_training import train_vectorized
from bouquet.engine.conv_chain import FLATTEN, Conv, Pool, parse_conv_chain
from bouquet.engine.conv_kernels import ConvOptions, conv_forward, conv_trainer
from bouquet.engine.evaluation import candidate_losses
from bouquet.engine.kernel_check import KernelMismatchWarning
from bouquet.engine.mlp_kernels import kernel_trainer
from bouquet.engine.simulator import RunSpec, Simulator
from bouquet.models import build_model


@pytest.fixture(scope="module")
def images():
    # mnist5k (28x28), rotated clusters; clients cut to 24, 20, 13, 9, 5 rows: with batch 8 some have fewer
    # local steps (all-padding steps) and partial last batches.
    data = build_dataset(DataSpec(name="mnist5k", num_clients=5, num_clusters=2, shift="rotate", train_per_client=24,
                                  test_per_client=6, resample=True, seed=1))
    cut = [replace(c, x_train=c.x_train[:n], y_train=c.y_train[:n], train_ids=c.train_ids[:n])
           for c, n in zip(data.clients, (24, 20, 13, 9, 5), strict=True)]
    return replace(data, clients=tuple(cut))


def _cnn(data):
    torch.manual_seed(0)
    return build_model("cifar_cnn", data.input_shape, data.num_outputs)


def _floral(data, weight_decay=0.0, router=None, **kw):
    model = wrap(_cnn(data), 3, 2, adaptor_bias=True)
    with torch.no_grad():  # B = 0 at init would hide every B-dependent term: start from a random B
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(0, 0.1, generator=torch.Generator().manual_seed(3))
    return floral(model, data.objective, lr=0.05, weight_decay=weight_decay,
                  router=router or RouterConfig(lr=0.5, init_std=1.0), **kw)


BUILDS = {
    "floral": _floral,
    "floral_temperature_entropy": lambda d, wd: _floral(
        d, wd, router=RouterConfig(lr=0.5, temperature=0.5, entropy=0.05, init_std=1.0)),
    "floral_plain_sgd": lambda d, wd: _floral(d, wd, precondition=False),
    # the official router: noise 1 on the logits (the same draws: both sides seeded alike) and a floor of 0.01
    "floral_noise_floor": lambda d, wd: _floral(d, wd, router=RouterConfig(lr=0.5, noise=1.0, floor=0.01,
                                                                          init_std=1.0)),
    "local_adaptor": lambda d, wd: local_adaptor(wrap(_cnn(d), 1, 2, adaptor_bias=True), d.objective, lr=0.05,
                                                 lora_lr=0.1, weight_decay=wd),
    "fedavg": lambda d, wd: fedavg(_cnn(d), d.objective, lr=0.05, weight_decay=wd),
    # skip_below = 0: every member runs (the kernels do not implement the official skip of small pi)
    "ensemble": lambda d, wd: ensemble(_cnn(d), d.objective, 3, lr=0.05, weight_decay=wd, skip_below=0.0,
                                       router=RouterConfig(lr=0.5, temperature=0.7, entropy=0.02, init_std=1.0)),
    # the official Ensemble: router noise 1 and members of pi_c < 1e-3 left out
    "ensemble_official": lambda d, wd: ensemble(_cnn(d), d.objective, 3, lr=0.05, weight_decay=wd,
                                                router=RouterConfig(lr=0.5, noise=1.0, init_std=3.0)),
    # the oracle's exact one-hot pi: the members' parameters mixed first, one chain per client
    "ensemble_optimal": lambda d, wd: ensemble(_cnn(d), d.objective, 2, lr=0.05, optimal_router=True,
                                               weight_decay=wd, router=RouterConfig()),
}


def _train_both(alg, data, first_round, options=None):
    trainable, payload, private, batches = first_round(data, alg, batch_size=8)
    trainer = conv_trainer(alg.model, alg.objective, alg.local_update, alg.loss_spec, options)
    assert trainer is not None
    torch.manual_seed(5)  # router noise: the kernels draw one [K, C] per step, as vmap does
    got = trainer(trainable, payload, private, batches)
    torch.manual_seed(5)
    ref = train_vectorized(alg.loss, alg.local_update, trainable, payload, private, batches)
    return trainable, got, ref


def _assert_same(got, ref):
    (params, loss), (ref_params, ref_loss) = got, ref
    assert set(params) == set(ref_params)
    for k in ref_params:
        torch.testing.assert_close(params[k], ref_params[k], rtol=1e-4, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}")
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(BUILDS))
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_conv_kernels_equal_autograd_on_the_loss(images, first_round, name, weight_decay):
    """Folded ConvLoRA kernels, router, preconditioning, weight decay and padding steps match the reference."""
    alg = BUILDS[name](images, weight_decay)
    if alg.local_update.plain_sgd() is None:  # weight decay with the router exempt: the kernels must decline
        assert conv_trainer(alg.model, alg.objective, alg.local_update, alg.loss_spec) is None
        return
    trainable, got, ref = _train_both(alg, images, first_round)
    steps = first_round(images, alg, batch_size=8)[3]["w"].sum(dim=2).gt(0).sum(dim=1)
    assert steps.min() < steps.max()  # some clients really have padding steps
    _assert_same(got, ref)
    trained = [k for k in got[0] if alg.local_update.plain_sgd().rate(k) != 0]
    assert trained and all(not torch.equal(got[0][k], trainable[k]) for k in trained)


@pytest.mark.parametrize("options", [ConvOptions(chunk=0), ConvOptions(chunk=1), ConvOptions(first="conv"),
                                     ConvOptions(convs="grouped"), ConvOptions(convs="im2col"),
                                     ConvOptions(channels_last=False, pool_first=False, foreach=False),
                                     ConvOptions(chunk=2, workers=1), ConvOptions(chunk=1, workers=3)],
                         ids=["all", "one", "first-conv", "grouped", "im2col", "nchw-relu-first-loop",
                              "chunks-in-turn", "chunks-on-threads"])
def test_every_measured_option_gives_the_same_training(images, first_round, options):
    _, got, ref = _train_both(_floral(images), images, first_round, options)
    _assert_same(got, ref)


def test_simulator_uses_the_kernels_for_convs_and_matches_the_client_loop(images, rounds_with_and_without_kernels):
    rounds_with_and_without_kernels(lambda: _floral(images), images, {"clients_per_round": 4, "batch_size": 8},
                                    ("batched conv kernels", "sequential"), rounds=2)


def test_same_rounds_as_the_pfllib_style_loop(images):
    """Every client, full batches (so batch order cannot differ), two epochs, two rounds: the same server model."""
    alg = _floral(images, router=RouterConfig(lr=0.5, init_std=0.0))  # zero logits, like the loop's fresh router
    rows = int(max(c.x_train.shape[0] for c in images.clients))
    k = images.num_clients
    sim = Simulator(alg, images, RunSpec(rounds=2, clients_per_round=k, batch_size=rows, local_epochs=2))
    assert sim.training_path == "batched conv kernels"
    state = sim.init_state()
    clients = [Client(i, c, alg.model, 0.05, 0.5, rows, 0) for i, c in enumerate(images.clients)]
    server = Server(clients, alg.model, k, 0)
    for c in clients:  # the loop trains two local epochs per round
        c.train = (lambda c=c, one=c.train: (one(), one())[0])
    for _ in range(2):
        state, _ = sim.run_round(state)
        server.round()
    for name, v in server.global_params.items():
        torch.testing.assert_close(state.server["params"][name], v, rtol=1e-4, atol=1e-5, msg=lambda m, n=name: n + m)
    logits = torch.stack([c.model.router.logits.detach() for c in clients])
    torch.testing.assert_close(state.clients["router.logits"], logits, rtol=1e-4, atol=1e-5)


def test_parse_conv_chain_layers_and_unsupported_models(images):
    layers = parse_conv_chain(wrap(_cnn(images), 2, 1))
    assert [type(la).__name__ if not isinstance(la, str) else la for la in layers] == [
        "Conv", "relu", "Pool", "Conv", "relu", "Pool", FLATTEN, "Dense", "relu", "Dense"]
    assert isinstance(layers[0], Conv) and layers[0].num == 2 and isinstance(layers[2], Pool)
    assert parse_conv_chain(build_model("mlp", images.input_shape, images.num_outputs)) is None  # no conv
    assert parse_conv_chain(nn.Sequential(nn.Conv2d(1, 4, 3, groups=1), nn.BatchNorm2d(4), nn.Flatten(),
                                          nn.Linear(4 * 26 * 26, 10))) is None
    assert parse_conv_chain(nn.Sequential(nn.Conv2d(2, 4, 3, groups=2), nn.Flatten(), nn.Linear(4, 2))) is None
    noisy = _floral(images, router=RouterConfig(lr=0.5, noise=1.0, init_std=1.0))
    assert conv_trainer(noisy.model, noisy.objective, noisy.local_update, noisy.loss_spec) is not None
    flat = wrap(build_model("mlp", images.input_shape, images.num_outputs), 3, 1)
    assert kernel_trainer(flat, noisy.objective, noisy.local_update, noisy.loss_spec) is None  # MLP: clean only


@pytest.mark.parametrize("name", sorted(BUILDS))
def test_evaluation_by_the_kernels_forward_equals_the_client_loop(images, name):
    sim = Simulator(BUILDS[name](images, 0.0), images, RunSpec(rounds=1, clients_per_round=4, batch_size=8))
    assert sim.eval_forward is not None
    state, _ = sim.run_round(sim.init_state())
    batched = sim.client_scores(state)
    assert sim.eval_trusted is True
    sim.eval_forward = None  # the client loop
    loop = sim.client_scores(state)
    torch.testing.assert_close(batched.loss, loop.loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(batched.score, loop.score)


def test_a_kernels_forward_that_disagrees_is_caught_and_the_client_loop_evaluates(images):
    sim = Simulator(_floral(images), images, RunSpec(rounds=1, clients_per_round=4, batch_size=8))
    state, _ = sim.run_round(sim.init_state())
    right = sim.eval_forward
    sim.eval_forward = lambda params, x: right(params, x) * 1.5  # a wrong model
    with pytest.warns(KernelMismatchWarning, match="forward disagrees"):
        got = sim.client_scores(state)
    assert sim.eval_trusted is False
    sim.eval_forward = None
    torch.testing.assert_close(got.loss, sim.client_scores(state).loss)


def _batched_and_client_loop(images, build, rounds=3):
    """The states after ``rounds`` rounds of the algorithm ``build()`` makes: its choice by loss batched (the
    one-client client_init never called), then client_init client by client (no ChooseByLoss)."""
    runs = []
    for batched in (True, False):
        alg = build()
        sim = Simulator(alg, images, RunSpec(rounds=rounds, clients_per_round=5, batch_size=8))
        if batched:
            sim.alg = replace(alg, client_init=lambda *a: pytest.fail("client_init called"))
        else:
            sim.alg = replace(alg, choose_by_loss=None)
        state = sim.init_state()
        for _ in range(rounds):
            state, _ = sim.run_round(state)
        runs.append(state)
    return runs


def test_ifca_picks_its_cluster_models_by_the_kernels_forward_as_the_client_loop_does(images):
    """IFCA's choice by loss from all clients' candidate losses at once equals client_init's, client by client."""
    (a, b), choice = _batched_and_client_loop(images, lambda: ifca(_cnn(images), images.objective, 3, lr=0.05)), \
        "ifca.choice"
    assert a.clients[choice].sum() == images.num_clients  # every client chose once per round
    torch.testing.assert_close(a.clients[choice], b.clients[choice])
    for k in b.server["params"]:
        torch.testing.assert_close(a.server["params"][k], b.server["params"][k], rtol=1e-4, atol=1e-5)


def test_candidate_losses_equal_each_clients_loss_under_each_model(images, first_round):
    alg = ifca(_cnn(images), images.objective, 2, lr=0.05)
    _, payload, _, batches = first_round(images, alg, batch_size=8)
    forward = conv_forward(alg.model, alg.objective, alg.loss_spec)
    got = candidate_losses(forward, payload, batches, alg.objective, chunk=2)
    for k in range(images.num_clients):
        x, y, w = (batches[n][k].flatten(0, 1) for n in ("x", "y", "w"))
        want = torch.stack([task_loss(alg.apply({n: v[c] for n, v in payload.items()}, x), y, w, alg.objective)
                            for c in range(2)])
        torch.testing.assert_close(got[k], want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("select", ["em", "loss"])
def test_floral_routers_chosen_by_loss_take_the_kernels_candidate_losses_as_the_client_loop_does(images, select):
    """FLoRAL's EM and loss-selected routers from all clients' component losses at once (the kernels' forward with
    a one-hot router per component) equal client_init's, client by client, over 3 rounds."""
    router = RouterConfig(select=select, init_std=1.0, explore=0.05)
    assert _floral(images, router=router).choose_by_loss is not None
    (a, b), router_key = _batched_and_client_loop(images, lambda: _floral(images, router=router)), "router.logits"
    torch.testing.assert_close(a.clients[router_key], b.clients[router_key], rtol=1e-4, atol=1e-4)
    for k in b.server["params"]:  # 3 rounds of float32 sums in two orders: 3e-5 apart on some CPUs
        torch.testing.assert_close(a.server["params"][k], b.server["params"][k], rtol=1e-4, atol=1e-4)


def test_a_router_floor_keeps_the_choice_by_loss_in_client_init(images):
    """With a floor, a one-hot router's pi is not e_c: the batched candidates would differ, so none is declared."""
    assert _floral(images, router=RouterConfig(select="em", floor=0.01)).choose_by_loss is None
    assert _floral(images, router=RouterConfig(select="gradient")).choose_by_loss is None
