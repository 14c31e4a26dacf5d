"""train_head: every LoRA method trains the head whole, federated or private as it treats lora_B; Potara merges it."""

from dataclasses import replace

import pytest
import torch

from bouquet.algorithms.lora import head_module, lora_model
from bouquet.app.config import ConfigError, parse_experiment
from bouquet.app.experiment import build_algorithm
from bouquet.data import build_dataset
from bouquet.engine.lambda_oracle import closed_form_lambdas
from bouquet.engine.simulator import Simulator
from bouquet.merging.data_weight import delta_distance
from bouquet.models import build_model

METHODS = ("fedit", "fedit_ft", "ffa_lora", "fedsa_lora", "local_lora", "ditto", "apfl", "potara")
HEAD = ("model.3.weight", "model.3.bias")  # the MLP's last Linear
RAW = {
    "name": "train_head",
    "data": {"name": "digits", "num_clients": 4, "num_clusters": 2, "seed": 0, "train_per_client": 32,
             "test_per_client": 20},
    "model": {"name": "mlp", "hidden": 16},
    "run": {"rounds": 3, "clients_per_round": 4, "batch_size": 16, "eval_every": 3},
    "train": {"lr": 0.2},
    "algo": {m: {"rank": 2, "train_head": True, **({"federated_rounds": 2} if m == "potara" else {})}
             for m in METHODS},
}
# where each method keeps the head: "server" (federated, sent like lora_B) and/or a client-state prefix
PLACES = {"fedit": ("server",), "fedit_ft": ("server",), "ffa_lora": ("server",), "fedsa_lora": ("local.",),
          "local_lora": ("local.",), "ditto": ("server", "personal."), "apfl": ("server", "personal."),
          "potara": ("server", "local.", "fedcopy.", "fold0.")}


@pytest.fixture(scope="module")
def setup():
    exp = parse_experiment(RAW)
    return exp, build_dataset(exp.data)


def _run(exp, data, name, rounds=3, vectorized=True):
    alg, _ = build_algorithm(exp, data, name, 0)
    sim = Simulator(alg, data, replace(exp.run.spec(), vectorized=vectorized), robust=exp.robust)
    state = sim.init_state()
    for _ in range(rounds):
        state, _ = sim.run_round(state)
    return alg, sim, state


def test_the_head_gets_no_lora_and_its_weights_join_the_initial_tensors():
    model = build_model("mlp", (64,), 10, hidden=16)
    assert head_module(model) == "3"
    template, init = lora_model(model, 2, train_head=True)
    assert set(init) == {"model.1.lora_A", "model.1.lora_B", *HEAD}
    assert torch.equal(init["model.3.weight"], model[3].weight) and init["model.3.weight"] is not model[3].weight
    with pytest.raises(ValueError, match="match the head '3'"):
        lora_model(model, 2, targets=["1", "3"], train_head=True)


@pytest.mark.parametrize("name", METHODS)
def test_every_lora_method_trains_the_head_where_it_keeps_lora_b(setup, name):
    exp, data = setup
    alg, sim, state = _run(exp, data, name)
    init = {k: v for k, v in alg.model.named_parameters() if k in HEAD}
    server = state.server["params"]
    for place in PLACES[name]:
        held = server if place == "server" else {k.removeprefix(place): v for k, v in state.clients.items()
                                                   if k.startswith(place)}
        assert set(HEAD) <= set(held), (name, place)
        assert float((held["model.3.weight"] - init["model.3.weight"]).abs().max()) > 1e-4, (name, place)
    if "server" not in PLACES[name]:
        assert not set(HEAD) & set(server)
    personal = alg.personalize(state.server, {k: v[0] for k, v in state.clients.items()})
    key = next(k for k in personal if k.endswith("model.3.weight"))  # APFL's are "w." and "v." prefixed
    assert float((personal[key] - init["model.3.weight"]).abs().max()) > 1e-4


@pytest.mark.parametrize("name", ["fedsa_lora", "potara"])
def test_vectorized_and_sequential_engines_agree_with_a_trained_head(setup, name):
    exp, data = setup
    _, sim_v, st_v = _run(exp, data, name, rounds=3)
    _, sim_s, st_s = _run(exp, data, name, rounds=3, vectorized=False)
    for k, v in {**st_v.server["params"], **st_v.clients}.items():
        other = st_s.server["params"].get(k, st_s.clients.get(k))
        assert torch.allclose(v, other, rtol=1e-3, atol=1e-5), (name, k)


def test_potara_merges_the_head_with_its_adaptors(setup):
    """Every layer of the merged model is lam * its federated + (1 - lam) * its local layer, the head included."""
    exp, data = setup
    alg, sim, state = _run(exp, data, "potara", rounds=4)
    lam = closed_form_lambdas(alg, state.server, state.clients)
    fed = state.server["params"]
    x = sim.test.x[:6]
    hidden = torch.relu(torch.nn.functional.linear(x.flatten(1), alg.model.model[1].base.weight,
                                                   alg.model.model[1].base.bias))
    for c in range(data.num_clients):
        cs = {k: v[c] for k, v in state.clients.items()}
        local = {k.removeprefix("local."): v for k, v in cs.items() if k.startswith("local.")}
        merged = alg.personalize(state.server, cs)
        w = lam[c]
        for k in HEAD:
            assert torch.allclose(merged[k], w * fed[k] + (1 - w) * local[k], atol=1e-6)
        head = lambda p: torch.nn.functional.linear(hidden, p["model.3.weight"], p["model.3.bias"])  # noqa: E731
        assert torch.allclose(head(merged), w * head(fed) + (1 - w) * head(local), atol=1e-5)
        # the endpoints are the federated and the local model, head and adaptors together
        for lam_end, params in ((1.0, fed), (0.0, local)):
            out = alg.apply(alg.merging.merge(state.server, cs, torch.tensor(lam_end)), x)
            assert torch.allclose(out, alg.apply(params, x), atol=1e-5)
        # the data estimator's distance counts the head: its d^2 is the adaptors' plus the head's
        lora = lambda p: {k: v for k, v in p.items() if k not in HEAD}  # noqa: E731
        copy = {k.removeprefix("fedcopy."): v for k, v in cs.items() if k.startswith("fedcopy.")}
        head_d2 = sum(((copy[k] - local[k]) ** 2).sum() for k in HEAD)
        assert float(head_d2) > 0
        assert torch.allclose(cs["trace.dist2"], delta_distance(lora(copy), lora(local)) + head_d2, rtol=1e-5)


def test_potara_per_layer_lambda_has_one_for_the_head(setup):
    exp, data = setup
    raw = {**RAW, "algo": {"potara": {**RAW["algo"]["potara"], "granularity": "layer"}}}
    alg, _, state = _run(parse_experiment(raw), data, "potara", rounds=3)
    lam = closed_form_lambdas(alg, state.server, state.clients)
    assert lam.shape == (4, 2)  # model.1 (LoRA) and model.3 (the head)
    assert bool(((lam >= 0) & (lam <= 1)).all())


def test_train_head_must_be_a_bool():
    raw = {**RAW, "algo": {"fedit": {"train_head": "yes"}}}
    with pytest.raises(ConfigError, match="algo.fedit.train_head"):
        parse_experiment(raw)
