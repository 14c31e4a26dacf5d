"""The speed/scale benchmark pieces: analytic FLOPs, the many-client federation, the PFLlib-style loop."""

import torch

from bouquet.app.bench.interleaved import interleaved
from bouquet.app.bench.interleaved import table as interleaved_table
from bouquet.app.bench.pfl_reference import Client, Server
from bouquet.app.bench.scale import interleaved_scale, interleaved_scale_table, many_clients, run_scale, table
from bouquet.app.bench.workload import Workload, build_floral, conv_flops_per_example, flops_per_example, linear_layers
from bouquet.engine.simulator import RunSpec, Simulator
from bouquet.models import build_model


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


def test_scale_point_and_interleaved_rounds():
    """One scale point (pooled clients, a checkpoint's bytes) and the interleaved timing, on a few clients."""
    data = many_clients(30, train=4, test=2)
    assert data.pooled is not None and data.pooled.x_pool.shape[0] == 5000  # the pool once, no client copies
    r = run_scale(30, rounds=2, per_round=5, warmup=0, threads=1)
    assert r["client_state_keys"] == ["router.logits"] and r["client_state_bytes"] == 30 * 4 * 4
    assert 0 < r["checkpoint_bytes"] < 2e6 and r["data_bytes"] > 5000 * 784 * 4
    assert "| 30 |" in table([r, {"clients": 7, "error": "boom"}])
    mixed = interleaved_scale([10, 20], rounds=2, per_round=5, warmup=0, threads=1)
    assert [m["clients"] for m in mixed] == [10, 20] and mixed[0]["ratio"] == 1.0
    assert "| 20 |" in interleaved_scale_table(mixed)


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


def test_conv_flops_of_floral_cnn():
    """cifar_cnn on 28x28: conv5x5 1->32 (24x24 out), conv3x3 32->64 (10x10 out), fc 576->64, fc 64->10."""
    model = build_model("cifar_cnn", (1, 28, 28), 10)
    f = conv_flops_per_example(model, (1, 28, 28))
    costs = [2 * 32 * 24 * 24 * 25, 2 * 64 * 10 * 10 * 32 * 9, 2 * 576 * 64, 2 * 64 * 10]
    assert f["forward"] == sum(costs)
    assert f["train"] == 2 * sum(costs) + sum(costs[1:])


def test_interleaved_cnn_comparison_reports_both_ways():
    """The cnn benchmark on a tiny federation: both ways train, evaluate and are timed round by round."""
    w = Workload(num_clients=6, clients_per_round=3, train_per_client=10, test_per_client=4, eval_every=2,
                 lr=0.03, model="cifar_cnn")
    result = interleaved(w, rounds=2, warmup=0, threads=1)
    assert result["training_path"] == "batched conv kernels"
    for way in ("bouquet", "pfllib"):
        r = result["ways"][way]
        assert len(r["round_s"]) == 2 and r["round_s_median"] > 0 and 0 <= r["accuracy"] <= 1
    assert result["ratio_wall"] > 0 and result["ratio_cpu"] > 0 and result["train_gflop_per_round"] > 0
    assert "pfllib / bouquet" in interleaved_table(result)
