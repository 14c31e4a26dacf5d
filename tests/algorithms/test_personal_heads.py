"""FedProx, FedPer and FedRep: they learn, their private heads stay private, and on a label-shift task
(each cluster its own label map) the personalized heads beat FedAvg's single model."""

import pytest
import torch

import bouquet as bq
from bouquet.algorithms.fedper import HEAD, head_names


@pytest.fixture(scope="module")
def label_shift():
    return bq.build_dataset(bq.DataSpec(name="digits", num_clients=20, num_clusters=4, shift="label_shift", seed=0))


BUILD = {
    "fedavg": lambda m, d: bq.fedavg(m, d.objective, lr=0.1),
    "fedprox": lambda m, d: bq.fedprox(m, d.objective, lr=0.1, mu=0.1),
    "fedper": lambda m, d: bq.fedper(m, d.objective, lr=0.1),
    "fedrep": lambda m, d: bq.fedrep(m, d.objective, lr=0.1),
}


def _run(name, data, vectorized=True, rounds=30):
    torch.manual_seed(0)
    model = bq.build_model("mlp", data.input_shape, data.num_outputs, hidden=32)
    sim = bq.Simulator(BUILD[name](model, data), data, bq.RunSpec(rounds=rounds, clients_per_round=10, batch_size=16,
                                                                  local_epochs=2, eval_every=rounds,
                                                                  vectorized=vectorized))
    state, records = sim.run()
    return sim, state, records


@pytest.fixture(scope="module")
def scores(label_shift):
    return {name: _run(name, label_shift)[2][-1]["eval"]["mean"] for name in BUILD}


def test_personal_heads_beat_fedavg_on_label_shift(scores):
    assert scores["fedavg"] < 0.35  # one model cannot fit four label maps
    assert scores["fedper"] > scores["fedavg"] + 0.3
    assert scores["fedrep"] > scores["fedavg"] + 0.2


def test_fedprox_learns_like_fedavg_and_its_proximal_term_acts(label_shift, scores):
    assert scores["fedprox"] > 0.15  # learns (chance is 0.1) on a task FedAvg cannot fit either
    sim_p, state_p, _ = _run("fedprox", label_shift, rounds=2)
    sim_a, state_a, _ = _run("fedavg", label_shift, rounds=2)
    assert sim_p.training_path == "vmap + autograd"  # the kernels implement plain SGD only
    diff = max(float((state_p.server["params"][k] - state_a.server["params"][k]).abs().max())
               for k in state_a.server["params"])
    assert diff > 1e-6


@pytest.mark.parametrize("name", ["fedper", "fedrep", "fedprox"])
def test_vectorized_equals_client_loop(label_shift, name):
    (_, a, ra), (_, b, rb) = _run(name, label_shift, True, 3), _run(name, label_shift, False, 3)
    for k in a.server["params"]:
        torch.testing.assert_close(a.server["params"][k], b.server["params"][k], rtol=1e-4, atol=1e-5)
    for k in a.clients:
        torch.testing.assert_close(a.clients[k], b.clients[k], rtol=1e-4, atol=1e-5)
    assert ra[-1]["train_loss"] == pytest.approx(rb[-1]["train_loss"], rel=1e-5)


def test_heads_stay_private_and_fedrep_alternates(label_shift):
    sim, state, records = _run("fedrep", label_shift, rounds=1)
    assert set(state.clients) == {HEAD + "3.weight", HEAD + "3.bias"}  # the classifier of the MLP
    assert set(state.server["params"]) == {"1.weight", "1.bias"}
    assert sim.alg.private_keys == (HEAD,)
    # one round of FedRep with only head steps moves no body parameter
    torch.manual_seed(0)
    model = bq.build_model("mlp", label_shift.input_shape, label_shift.num_outputs, hidden=32)
    alg = bq.fedrep(model, label_shift.objective, lr=0.1, head_fraction=0.999)
    sim = bq.Simulator(alg, label_shift, bq.RunSpec(rounds=1, clients_per_round=4, batch_size=16))
    start = sim.init_state()
    after, _ = sim.run_round(start)
    assert all(torch.equal(after.server["params"][k], v) for k, v in start.server["params"].items())
    assert not torch.equal(after.clients[HEAD + "3.weight"], start.clients[HEAD + "3.weight"])


def test_head_names_by_pattern_and_errors():
    model = bq.build_model("mlp", (4,), 3, hidden=5)
    assert head_names(model) == {"3.weight", "3.bias"}
    assert head_names(model, ["1"]) == {"1.weight", "1.bias"}
    with pytest.raises(ValueError, match="no module matched"):
        head_names(model, ["classifier"])
    with pytest.raises(ValueError, match="every parameter"):
        head_names(model, ["1", "3"])
