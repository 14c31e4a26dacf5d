"""Flower's message conventions: Flower's stock FedAvg drives bouquet's ClientApp, a stock ClientApp (written the
way Flower's quickstart-pytorch writes one) takes part in bouquet's FedAvg, in process over a LoopbackGrid."""

import math
import subprocess
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from flowerkit import SMALL, LoopbackGrid
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp.strategy import FedAvg
from torch import nn

from bouquet.app import flower_run
from bouquet.app.cli import main as cli_main
from bouquet.app.flower_apps import FAILURE, SUMMARY, RunFailedError
from bouquet.app.flower_apps import clientapp as bouquet_client
from bouquet.app.flower_apps import main as server_main
from bouquet.app.flower_job import APP_DEFAULTS, load_job
from bouquet.app.flower_run import parse_failure, parse_output
from bouquet.flower.strategy import BouquetStrategy


@pytest.mark.parametrize("algorithm", ["fedavg", "fedprox", "fedavg_ft"])
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


# A stock Flower ClientApp, written as Flower's quickstart-pytorch writes one: its own model class and data,
# `arrays` + `metrics["num-examples"]` in the reply, no query handler.
stock_app = ClientApp()


def _stock_model_and_data(msg: Message, context: Context, split: int):
    model = nn.Sequential(nn.Flatten(), nn.Linear(10, 3))
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    rows = load_job(dict(context.run_config)).client_rows(int(context.node_config["partition-id"]))[split]
    o, n = int(rows.offsets[0]), int(rows.sizes[0])
    return model, rows.x[o:o + n].float(), rows.y[o:o + n].float()


@stock_app.train()
def _stock_train(msg: Message, context: Context) -> Message:
    model, x, y = _stock_model_and_data(msg, context, 0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(3):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
    metrics = MetricRecord({"train_loss": loss.item(), "num-examples": len(x)})
    return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics}), reply_to=msg)


@stock_app.evaluate()
def _stock_evaluate(msg: Message, context: Context) -> Message:
    model, x, y = _stock_model_and_data(msg, context, 1)
    with torch.no_grad():
        loss = float(nn.functional.mse_loss(model(x), y))
    metrics = MetricRecord({"eval_loss": loss, "eval_mse": loss, "num-examples": len(x)})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)


def test_stock_clientapp_takes_part_in_bouquet_fedavg():
    rc = {"experiment": SMALL, "algorithm": "fedavg", "seed": 0, "node-wait": 5.0}
    job = load_job(rc)
    grid = LoopbackGrid(stock_app, rc, num_nodes=job.num_clients)  # one client per node, no query handler
    strategy = BouquetStrategy(job)
    strategy.start(grid)
    assert strategy.stock == set(grid.contexts) and strategy.partitions == {100 + i: i for i in range(6)}
    records = strategy.log.records
    assert len(records) == 3
    for rec in records:
        assert not {"skipped", "rejected", "failed"} & set(rec), rec
        assert math.isfinite(rec["train_loss"]) and len(rec["clients"]) == 4
        assert math.isfinite(rec["eval"]["mean"]) and "missing" not in rec["eval"]
    start = BouquetStrategy(job).state.server["params"]
    assert any(not torch.equal(strategy.state.server["params"][k], v) for k, v in start.items())


def test_stock_and_bouquet_nodes_share_a_federation():
    rc = {"experiment": SMALL, "algorithm": "fedavg", "seed": 0, "node-wait": 5.0}
    grid = LoopbackGrid(bouquet_client, rc, num_nodes=6)
    stock = {101, 104}
    grid.app = lambda msg, ctx: (stock_app if ctx.node_id in stock else bouquet_client)(msg, ctx)
    strategy = BouquetStrategy(load_job(rc))
    strategy.start(grid)
    assert strategy.stock == stock and strategy.partitions == {100 + i: i for i in range(6)}
    assert all(not {"skipped", "rejected", "failed"} & set(r) for r in strategy.log.records)


def test_a_run_where_every_round_failed_ends_with_one_line(capsys):
    rc = {"experiment": SMALL, "algorithm": "fedavg", "seed": 0, "min-replies": 5}  # 4 clients per round < 5
    grid = LoopbackGrid(bouquet_client, rc, num_nodes=3)
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=rc)
    with pytest.raises(RunFailedError, match=r"^bouquet: error: every round failed: nothing was aggregated in 3 "):
        server_main(grid, context)
    out = capsys.readouterr().out
    assert FAILURE + "every round failed" in out and SUMMARY not in out
    assert parse_failure(out).startswith("every round failed") and "\n" not in parse_failure(out)


def test_cli_exits_1_with_the_servers_reason(tmp_path, monkeypatch, capsys):
    config = tmp_path / "small.toml"
    config.write_text(SMALL)
    line = FAILURE + "every round failed: nothing was aggregated in 3 rounds (12 updates rejected, ...)\n"
    monkeypatch.setattr(flower_run, "flwr_run", lambda *a, **k: subprocess.CompletedProcess([], 1, stdout=line))
    code = cli_main(["run", str(config), "--engine", "flower", "--superlink", "127.0.0.1:9", "--out",
                     str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.strip().splitlines() == ["bouquet: error: fedavg seed 0: every round failed: nothing was aggregated "
                                        "in 3 rounds (12 updates rejected, ...)"]


def test_app_defaults_are_pyprojects():
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    table = pyproject["tool"]["flwr"]["app"]["config"]
    assert {k: APP_DEFAULTS[k] for k in table} == table


def test_apps_run_with_flowers_defaults_when_no_run_config_is_given(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default config is found in the app directory, not the cwd
    grid = LoopbackGrid(bouquet_client, {}, num_nodes=2)  # as Flower's run_simulation without a run config
    server_main(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={}))
    records, summary = parse_output(capsys.readouterr().out)
    assert len(records) == 5 and summary is not None  # the app's set: run.rounds=5
    assert records[0]["algorithm"] == "fedavg" and len(records[0]["clients"]) == 10  # configs/synthetic_linear.toml
    assert all(math.isfinite(r["eval"]["mean"]) for r in records)
