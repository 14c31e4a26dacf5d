"""``bouquet export --node-state``: a client's peft adapter rebuilt on its SuperNode from the node's state
directory equals the adapter the local engine keeps for the same run (the model never left the node)."""

from __future__ import annotations

import pytest
import torch
from flowerkit import LoopbackGrid
from flwr.app import Context, RecordDict

from bouquet.app.cli import main
from bouquet.app.flower_apps import clientapp
from bouquet.app.flower_apps import main as server_main

peft = pytest.importorskip("peft")
safetensors = pytest.importorskip("safetensors.torch")

CONFIG = """
name = "export_node"
algorithms = ["{algorithm}"]
[data]
name = "text_tasks"
num_clients = 4
num_clusters = 2
tokenizer = "bundled"
max_tokens = 12
train_per_client = 8
test_per_client = 4
[model]
name = "hf"
head = "sequence_classification"
[run]
rounds = 2
clients_per_round = 4
batch_size = 4
local_steps = 1
eval_every = 1
vectorized = false
[train]
lr = 0.5
"""


@pytest.mark.parametrize("algorithm", ["fedit", "ditto"])
def test_node_export_equals_the_local_engines_adapter(tmp_path, capsys, algorithm):
    config = tmp_path / "c.toml"
    config.write_text(CONFIG.format(algorithm=algorithm))
    assert main(["run", str(config), "--out", str(tmp_path / "local"), "--no-progress"]) == 0
    rc = {"config": str(config), "algorithm": algorithm, "seed": 0, "node-wait": 5.0, "run-id": "x"}
    nodes = [{"state-dir": str(tmp_path / f"node-{i}"), "partition-id": i, "num-partitions": 3} for i in range(3)]
    server_main(LoopbackGrid(clientapp, rc, 3, node_configs=nodes),
                Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=rc))
    capsys.readouterr()
    out = tmp_path / "exported"
    assert main(["export", "--node-state", str(tmp_path / "node-1"), "--config", str(config), "--client", "1",
                 "--out", str(out)]) == 0  # client 1 lives on node 1 (k mod 3)
    assert "peft adapter:" in capsys.readouterr().out
    mine = safetensors.load_file(out / "adapter_model.safetensors")
    kept = safetensors.load_file(tmp_path / "local" / "adapters" / f"{algorithm}-seed0" / "client_1" /
                                 "adapter_model.safetensors")
    assert mine.keys() == kept.keys() and any("classifier" in k for k in mine)
    for k in mine:
        assert torch.allclose(mine[k], kept[k], atol=1e-5), k


def test_node_export_needs_one_source_and_the_config(tmp_path, capsys):
    assert main(["export", "--client", "0", "--out", str(tmp_path / "o")]) == 2
    assert "give RUN_DIR or --node-state" in capsys.readouterr().err
    assert main(["export", "--node-state", str(tmp_path), "--client", "0", "--out", str(tmp_path / "o")]) == 2
    assert "--config" in capsys.readouterr().err
