"""IFCA: picks the lowest-loss model on training batches, uploads only it, learns the clusters."""

import torch
from torch import nn

from bouquet.algorithms.ifca import CHOICE, CLUSTER_WEIGHT, ifca
from bouquet.data import DataSpec, build_dataset
from bouquet.engine.simulator import RunSpec, Simulator


def test_client_picks_the_model_of_lowest_training_loss_and_uploads_only_it():
    torch.manual_seed(0)
    alg = ifca(nn.Linear(2, 1), "regression", 3, lr=0.1)
    server, clients = alg.init(torch.Generator(), torch.tensor([0, 1]))
    params = server["params"]
    x = torch.randn(1, 4, 2)
    y = x[0] @ params["weight"][2].T + params["bias"][2]  # exactly model 2's predictions
    batches = {"x": x, "y": y[None], "w": torch.ones(1, 4)}
    tr = alg.client_init(alg.broadcast(server), {CHOICE: clients[CHOICE][0]}, batches)
    assert torch.equal(tr[CHOICE], torch.tensor([0.0, 0.0, 1.0]))
    assert torch.equal(tr["weight"], params["weight"][2])
    upload, private = alg.client_final(tr, {}, {}, torch.tensor(4), {})
    assert set(upload) == {"weight", "bias", CLUSTER_WEIGHT} and upload["weight"].shape == (1, 2)
    assert torch.equal(private[CHOICE], tr[CHOICE])


def test_aggregation_only_touches_chosen_models_and_unsampled_client_uses_model_0():
    torch.manual_seed(0)
    alg = ifca(nn.Linear(2, 1), "regression", 3, lr=0.1)
    server, clients = alg.init(torch.Generator(), torch.tensor([0, 1]))
    uploads = {"weight": torch.ones(2, 1, 2), "bias": torch.zeros(2, 1),
               CLUSTER_WEIGHT: torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])}
    agg = alg.aggregate(server, uploads, torch.tensor([1.0, 3.0]))
    new = agg["params"]
    assert torch.equal(new["weight"][0], torch.ones(1, 2))
    assert torch.equal(new["weight"][1:], server["params"]["weight"][1:])
    fresh = alg.personalize(agg, {CHOICE: torch.zeros(3)})
    assert torch.equal(fresh["weight"], new["weight"][0])


def test_learns_and_recovers_clusters_with_both_engines_agreeing():
    data = build_dataset(DataSpec(name="synthetic_linear", num_clients=10, num_clusters=2))
    finals = []
    for vectorized in (True, False):
        torch.manual_seed(0)
        alg = ifca(nn.Linear(10, 3), data.objective, 2, lr=0.1)
        sim = Simulator(alg, data, RunSpec(rounds=100, clients_per_round=10, batch_size=4, vectorized=vectorized))
        state = sim.init_state()
        for _ in range(100 if vectorized else 3):
            state, _ = sim.run_round(state)
        finals.append((alg, sim, state))
    alg, sim, state = finals[0]
    assert sim.evaluate(state)["mean"] < 0.05
    assert alg.report(state.server, state.clients, data.clusters)["router_ari"] == 1.0
    # Engine agreement after 3 rounds.
    torch.manual_seed(0)
    alg_v = ifca(nn.Linear(10, 3), data.objective, 2, lr=0.1)
    sim_v = Simulator(alg_v, data, RunSpec(rounds=3, clients_per_round=10, batch_size=4))
    st = sim_v.init_state()
    for _ in range(3):
        st, _ = sim_v.run_round(st)
    for k, v in st.server["params"].items():
        torch.testing.assert_close(v, finals[1][2].server["params"][k], atol=1e-5, rtol=1e-4)
