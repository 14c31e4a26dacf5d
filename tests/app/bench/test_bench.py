"""The speed/scale benchmark pieces: analytic FLOPs, the many-client federation, the PFLlib-style loop."""

import torch

from bouquet.app.bench.pfl_reference import Client, Server
from bouquet.app.bench.scale import many_clients
from bouquet.app.bench.workload import Workload, build_floral, flops_per_example, linear_layers
from bouquet.engine.simulator import RunSpec, Simulator


def test_flops_of_the_workload_mlp():
    """784-200-10 with 4 rank-1 adaptors: forward 2*(784*200 + 4*(784+200)) + 2*(200*10 + 4*(200+10))."""
    data = many_clients(8)
    alg = build_floral(Workload(num_clients=8), data)
    assert linear_layers(alg.model) == [(784, 200, 4, 1), (200, 10, 4, 1)]
    f = flops_per_example(alg.model)
    first, second = 2 * (784 * 200 + 4 * 984), 2 * (200 * 10 + 4 * 210)
    assert f["forward"] == first + second
    assert f["train"] == 2 * (first + second) + second  # no input gradient for the data


def test_many_clients_keeps_only_router_state():
    data = many_clients(40, train=6, test=2)
    data.check()
    assert data.num_clients == 40 and data.clients[0].num_train == 6
    alg = build_floral(Workload(num_clients=40, clients_per_round=5), data)
    sim = Simulator(alg, data, RunSpec(rounds=1, clients_per_round=5, batch_size=4))
    state, _ = sim.run_round(sim.init_state())
    assert set(state.clients) == {"router.logits"}
    assert state.clients["router.logits"].shape == (40, 4)


def test_pfl_reference_round_trains_and_aggregates():
    data = many_clients(6, train=10, test=3)
    w = Workload(num_clients=6, clients_per_round=3, batch_size=4)
    alg = build_floral(w, data)
    clients = [Client(k, c, alg.model, w.lr, w.router_lr, w.batch_size, 0) for k, c in enumerate(data.clients)]
    server = Server(clients, alg.model, 3, 0)
    before = {k: v.clone() for k, v in server.global_params.items()}
    loss = server.round()
    assert loss > 0
    assert not torch.equal(before["model.1.base.weight"], server.global_params["model.1.base.weight"])
    assert 0.0 <= server.evaluate() <= 1.0
