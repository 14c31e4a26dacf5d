"""Component revival: a dead component is refilled from one half of the most used one, twins share a prior."""

import math

import torch
from torch import nn

from bouquet.algorithms.floral import RouterConfig, floral, wrap
from bouquet.algorithms.revival import initial_revival, revive_step, share_twin_prior
from bouquet.data import DataSpec, build_dataset
from bouquet.engine.simulator import RunSpec, Simulator


def _uploads(num_clients: int = 8, num: int = 3, dim: int = 5):
    # Every client chose component 0; two groups whose trained adaptor 0 differ by +-1 in every entry.
    torch.manual_seed(0)
    side = torch.arange(num_clients) % 2 == 0
    bank = torch.zeros(num_clients, num, dim, dtype=torch.float64)
    bank[:, 0] = torch.where(side[:, None], 1.0, -1.0) + 0.01 * torch.randn(num_clients, dim, dtype=torch.float64)
    mixture = torch.zeros(num_clients, num, dtype=torch.float64)
    mixture[:, 0] = 0.96
    mixture[:, 1:] = 0.02
    return {"a.lora_A": bank}, mixture, side


def test_split_fills_the_dead_component_with_one_group_and_names_the_twins():
    uploads, mixture, side = _uploads()
    params = {"a.lora_A": uploads["a.lora_A"].mean(0)}
    state = initial_revival(3)
    state["share"] = torch.tensor([0.9, 0.08, 0.02], dtype=torch.float64)
    n = torch.full((8,), 10.0)
    new, rev = revive_step(state, params, uploads, mixture, n, ["a.lora_A"], revive=0.25, window=5)
    halves = {round(float(new["a.lora_A"][c].mean())) for c in (0, 2)}
    assert halves == {1, -1}  # component 0 kept one group's mean, the dead component 2 took the other's
    assert torch.equal(new["a.lora_A"][1], params["a.lora_A"][1])  # the others untouched
    assert rev["twin"].tolist() == [2, -1, 0] and int(rev["left"]) == 5 and int(rev["splits"]) == 1
    assert math.isclose(float(rev["share"][0]), float(rev["share"][2]))


def test_no_split_while_every_component_keeps_its_share_or_a_window_runs():
    uploads, mixture, _ = _uploads()
    params = {"a.lora_A": uploads["a.lora_A"].mean(0)}
    n = torch.full((8,), 10.0)
    balanced = initial_revival(3)
    new, rev = revive_step(balanced, params, uploads, torch.full((8, 3), 1 / 3, dtype=torch.float64), n,
                           ["a.lora_A"], revive=0.25, window=5)
    assert new is params and int(rev["splits"]) == 0
    running = {**initial_revival(3), "share": torch.tensor([0.9, 0.08, 0.02], dtype=torch.float64),
               "left": torch.tensor(3)}
    new, rev = revive_step(running, params, uploads, mixture, n, ["a.lora_A"], revive=0.25, window=5)
    assert new is params and int(rev["left"]) == 2


def test_twins_share_their_prior_mass_and_other_components_keep_theirs():
    logits = torch.tensor([2.0, 0.0, -1.0], dtype=torch.float64)
    prior = torch.softmax(logits / 2.0, -1)
    shared = torch.softmax(share_twin_prior(logits, torch.tensor([2, -1, 0]), 2.0) / 2.0, -1)
    assert torch.allclose(shared[0], shared[2]) and torch.allclose(shared[0], (prior[0] + prior[2]) / 2)
    assert torch.allclose(shared[1], prior[1]) and torch.allclose(shared.sum(), torch.tensor(1.0, dtype=torch.float64))
    assert torch.equal(share_twin_prior(logits, None, 2.0), logits)


def _em_run(revive: float):
    data = build_dataset(DataSpec(name="synthetic_linear", num_clients=10, num_clusters=2))
    torch.manual_seed(0)
    alg = floral(wrap(nn.Linear(10, 3), 2, 1), data.objective, lr=0.1,
                 router=RouterConfig(select="em", revive=revive, revive_window=10))
    sim = Simulator(alg, data, RunSpec(rounds=60, clients_per_round=10, batch_size=4))
    state = sim.init_state()
    for _ in range(60):
        state, _ = sim.run_round(state)
    return sim.evaluate(state), state


def test_revival_that_never_fires_changes_nothing_and_logs_the_shares():
    # Both clusters keep their component (ARI 1), so no share falls below revive / C: the run must equal
    # the run without revival bit for bit, and report each component's share of the examples.
    plain, plain_state = _em_run(0.0)
    revived, revived_state = _em_run(0.25)
    assert plain["router_ari"] == 1.0 and "component_share" not in plain
    assert revived["revival_splits"] == 0 and math.isclose(sum(revived["component_share"]), 1.0, abs_tol=1e-3)
    assert min(revived["component_share"]) > 0.25 / 2
    for k, v in plain_state.server["params"].items():
        assert torch.equal(v, revived_state.server["params"][k]), k
