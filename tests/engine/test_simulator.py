"""The local engine: vectorized == sequential, seeded sampling, all-client evaluation, bytes accounting."""

from dataclasses import replace

import pytest
import torch

from bouquet.algorithms import ALGORITHMS, RouterConfig
from bouquet.algorithms.contract import Finetune, payload_nbytes
from bouquet.algorithms.fedavg import fedavg
from bouquet.algorithms.floral import floral, wrap
from bouquet.algorithms.local import local
from bouquet.algorithms.routing import ROUTER
from bouquet.app.config import parse_experiment
from bouquet.app.experiment import build_algorithm
from bouquet.data import DataSpec, build_dataset
from bouquet.engine.simulator import Simulator
from bouquet.engine.spec import RunSpec, resolve_device, resolve_vectorized
from bouquet.models import build_model


@pytest.fixture(scope="module")
def digits():
    return build_dataset(DataSpec(name="digits", num_clients=12, num_clusters=3, shift="label_shift",
                                  partition="dirichlet", alpha=0.5, seed=1))


def _sim(data, builder, vectorized, finetune=0, **kw):
    torch.manual_seed(0)
    model = build_model("mlp", data.input_shape, data.num_outputs, hidden=32)
    alg = builder(model, data.objective, lr=0.1, **({"finetune": Finetune(finetune, 0.1)} if finetune else {}))
    spec = RunSpec(rounds=4, clients_per_round=5, batch_size=16, vectorized=vectorized, **kw)
    return Simulator(alg, data, spec, seed=3)


def _run(sim, rounds):
    state = sim.init_state()
    records = []
    for _ in range(rounds):
        state, rec = sim.run_round(state)
        records.append(rec)
    return state, records


@pytest.mark.parametrize("builder", [fedavg, local])
@pytest.mark.parametrize("steps", [None, 3])
def test_vectorized_equals_sequential(digits, builder, steps):
    """Padding, masking and vmap change nothing: same losses, states and evaluation as the client loop."""
    results = []
    for vec in (True, False):
        sim = _sim(digits, builder, vec, local_steps=steps)
        state, recs = _run(sim, 4)
        results.append((state, recs, sim.evaluate(state)))
    (s1, r1, e1), (s2, r2, e2) = results
    for a, b in zip(r1, r2, strict=True):
        assert a["clients"] == b["clients"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5, abs=1e-6)
    flat1 = {**s1.server.get("params", {}), **s1.clients}
    flat2 = {**s2.server.get("params", {}), **s2.clients}
    for k in flat1:
        torch.testing.assert_close(flat1[k], flat2[k], rtol=1e-4, atol=1e-5)
    assert e1["mean"] == pytest.approx(e2["mean"], abs=1e-6)


def test_finetune_vectorized_equals_sequential(digits):
    evals = []
    for vec in (True, False):
        sim = _sim(digits, fedavg, vec, finetune=1)
        state, _ = _run(sim, 2)
        evals.append(sim.evaluate(state))
    assert evals[0]["per_client"] == pytest.approx(evals[1]["per_client"], abs=1e-6)


def test_sampling_is_seeded_and_without_replacement(digits):
    sim = _sim(digits, fedavg, True)
    _, r1 = _run(sim, 3)
    _, r2 = _run(sim, 3)
    assert [r["clients"] for r in r1] == [r["clients"] for r in r2]
    for r in r1:
        assert len(set(r["clients"])) == 5
    assert len({tuple(r["clients"]) for r in r1}) > 1


def test_evaluation_covers_every_client(digits):
    sim = _sim(digits, local, True)
    state, _ = _run(sim, 1)
    ev = sim.evaluate(state)
    assert len(ev["per_client"]) == digits.num_clients
    assert set(ev["per_cluster"]) == {"0", "1", "2"}
    sizes = digits.test_sizes().double()
    manual = (torch.tensor(ev["per_client"], dtype=torch.float64) * sizes).sum() / sizes.sum()
    assert ev["mean"] == pytest.approx(float(manual), abs=1e-5)


def test_bytes_counted_from_payload_tensors(digits):
    sim = _sim(digits, fedavg, True)
    state = sim.init_state()
    state, rec = sim.run_round(state)
    model_bytes = sum(p.numel() * 4 for p in sim.alg.model.parameters())
    assert payload_nbytes(sim.alg.broadcast(state.server)) == model_bytes
    assert rec["bytes_down"] == 5 * model_bytes
    assert rec["bytes_up"] == 5 * model_bytes
    sim_local = _sim(digits, local, True)
    _, rec_local = sim_local.run_round(sim_local.init_state())
    assert rec_local["bytes_up"] == rec_local["bytes_down"] == 0


def test_local_clients_train_only_when_sampled(digits):
    sim = _sim(digits, local, True)
    state0 = sim.init_state()
    state1, rec = sim.run_round(state0)
    touched = set(rec["clients"])
    for k in range(digits.num_clients):
        same = all(torch.equal(state0.clients[n][k], state1.clients[n][k]) for n in state0.clients)
        assert same == (k not in touched)


def test_nan_update_is_dropped_and_reported(digits):
    sim = _sim(digits, fedavg, True)
    state = sim.init_state()
    bad = dict(sim.alg.__dict__)
    honest_final = sim.alg.client_final

    def poisoned_final(trainable, payload, cs, n, batches):
        up, new = honest_final(trainable, payload, cs, n, batches)
        first = next(iter(up))
        up[first] = up[first] * torch.where(n == sim.num_examples[0], float("nan"), 1.0)
        return up, new

    bad["client_final"] = poisoned_final
    from bouquet.algorithms.contract import Algorithm

    sim = Simulator(Algorithm(**bad), digits, sim.spec, seed=sim.seed)
    # make sure client 0 is sampled: sample many rounds until it is
    for _ in range(20):
        state, rec = sim.run_round(state)
        if 0 in rec["clients"]:
            break
    assert 0 in rec["clients"]
    assert rec["clients"].index(0) in rec["rejected"]
    for v in state.server["params"].values():
        assert torch.isfinite(v).all()


def _conv_net() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(4 * 8 * 8, 10))


def test_auto_vectorization_loops_over_clients_for_conv_models_on_cpu():
    mlp = build_model("mlp", (1, 8, 8), 10, hidden=8)
    assert resolve_vectorized("auto", mlp, "cpu") is True
    assert resolve_vectorized("auto", _conv_net(), "cpu") is False
    assert resolve_vectorized("auto", _conv_net(), "cuda:0") is True
    assert resolve_vectorized(True, _conv_net(), "cpu") is True
    assert resolve_vectorized(False, mlp, "cpu") is False


def test_auto_device_is_cuda_when_available_else_cpu():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto") == expected
    assert resolve_device("cpu") == "cpu" and resolve_device("cuda:1") == "cuda:1"
    RunSpec(rounds=1, clients_per_round=1, batch_size=1, device="auto").check("run")
    with pytest.raises(Exception, match="run.device"):
        RunSpec(rounds=1, clients_per_round=1, batch_size=1, device="gpu").check("run")
    data = build_dataset(DataSpec(name="digits", num_clients=6, num_clusters=2, seed=0))
    sim = _sim(data, fedavg, True, device="auto")
    state, _ = sim.run_round(sim.init_state())
    assert sim.device.type == expected
    assert all(v.device.type == expected for v in state.server["params"].values())


def test_floral_convlora_vectorized_equals_sequential():
    """The path "auto" picks for CNNs on CPU (the client loop) trains ConvLoRA mixtures exactly as vmap does."""
    data = build_dataset(DataSpec(name="digits", num_clients=8, num_clusters=2, shift="rotate", seed=2))
    results = []
    for vec in (True, False):
        torch.manual_seed(0)
        alg = floral(wrap(_conv_net(), 2, 1), data.objective, lr=0.1, router=RouterConfig(lr=0.3))
        sim = Simulator(alg, data, RunSpec(rounds=2, clients_per_round=4, batch_size=16, vectorized=vec), seed=1)
        state, recs = _run(sim, 2)
        results.append((state, recs, sim.evaluate(state)))
    (s1, r1, e1), (s2, r2, e2) = results
    for a, b in zip(r1, r2, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5, abs=1e-6)
    for k, v in s1.server["params"].items():
        torch.testing.assert_close(v, s2.server["params"][k], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(s1.clients[ROUTER], s2.clients[ROUTER], rtol=1e-4, atol=1e-5)
    assert e1["mean"] == pytest.approx(e2["mean"], abs=1e-6)


GRAPH_CHECK = {"name": "graph", "data": {"name": "digits", "num_clients": 6, "num_clusters": 2, "shift": "rotate"},
               "model": {"name": "mlp", "hidden": 16},
               "run": {"rounds": 2, "clients_per_round": 3, "batch_size": 8}, "train": {"lr": 0.1}}


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_client_loop_states_carry_no_autograd_graph(name):
    """A template tensor that requires grad reaching a loss chains every step's graph onto the state
    (Local Adaptor's router did: +1.7 GB a round on the CNN); states after sequential rounds must be plain."""
    exp = parse_experiment(GRAPH_CHECK)
    data = build_dataset(exp.data)
    alg, _ = build_algorithm(exp, data, name, 0)
    sim = Simulator(alg, data, replace(exp.run.spec(), vectorized=False), robust=exp.robust)
    state, _ = _run(sim, 2)
    tensors = {**state.server.get("params", {}), **state.clients}
    assert [k for k, v in tensors.items() if v.requires_grad] == []


@pytest.mark.parametrize("builder", [fedavg, local])
def test_training_in_client_chunks_equals_all_clients_at_once(digits, builder):
    """run.train_chunk bounds how many clients share a stacked step; the results stay the same."""
    results = []
    for chunk in (0, 2):
        sim = _sim(digits, builder, True, hand_batched=False, train_chunk=chunk)
        assert sim.training_path == "vmap + autograd"
        state, recs = _run(sim, 3)
        results.append((state, recs))
    (s1, r1), (s2, r2) = results
    assert [r["train_loss"] for r in r1] == pytest.approx([r["train_loss"] for r in r2], rel=1e-5)
    flat1 = {**s1.server.get("params", {}), **s1.clients}
    flat2 = {**s2.server.get("params", {}), **s2.clients}
    for k in flat1:
        torch.testing.assert_close(flat1[k], flat2[k], rtol=1e-5, atol=1e-6)
