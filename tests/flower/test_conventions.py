"""Flower's message conventions: Flower's stock FedAvg drives bouquet's ClientApp, a stock ClientApp (written the
way Flower's quickstart-pytorch writes one) takes part in bouquet's FedAvg, in process over a LoopbackGrid."""

import math

import numpy as np
import pytest
from flowerkit import SMALL, LoopbackGrid
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp.strategy import FedAvg

from bouquet.app.flower_apps import clientapp as bouquet_client
from bouquet.app.flower_job import load_job


@pytest.mark.parametrize("algorithm", ["fedavg", "fedprox"])
@pytest.mark.parametrize("by_name", [True, False])
def test_stock_fedavg_drives_bouquet_clientapp(algorithm, by_name):
    rc = {"experiment": SMALL, "algorithm": algorithm, "seed": 0}
    job = load_job(rc)
    model = {k: v.numpy() for k, v in job.initial_global.items()}
    # a torch state_dict with the model's names, or a list of arrays (keys "0", "1"...), as Flower users write
    initial = ArrayRecord(dict(job.initial_global)) if by_name else ArrayRecord(list(model.values()))
    grid = LoopbackGrid(bouquet_client, rc, num_nodes=job.num_clients)  # one client per node
    result = FedAvg(fraction_train=0.5).start(grid, initial, num_rounds=3, timeout=60.0)
    assert len(result.train_metrics_clientapp) == 3 and len(result.evaluate_metrics_clientapp) == 3
    final = result.arrays.to_numpy_ndarrays()
    assert [a.shape for a in final] == [a.shape for a in model.values()]
    assert all(np.isfinite(a).all() for a in final)
    assert any(not np.allclose(a, b) for a, b in zip(final, model.values(), strict=True))  # it trained
    assert math.isfinite(result.train_metrics_clientapp[3]["train_loss"])
    assert math.isfinite(result.evaluate_metrics_clientapp[3]["eval_loss"])


def test_stock_fedavg_with_a_personalized_method_fails_in_one_line():
    rc = {"experiment": SMALL.replace('["fedavg"]', '["fedavg", "local"]'), "algorithm": "local", "seed": 0}
    grid = LoopbackGrid(bouquet_client, rc, num_nodes=6)
    content = {"arrays": ArrayRecord([np.zeros(3, np.float32)]), "config": ConfigRecord({"server-round": 1})}
    msg = Message(RecordDict(content), dst_node_id=100, message_type="train")
    with pytest.raises(ValueError, match="^bouquet: error: arrays"):
        bouquet_client(msg, grid.contexts[100])
