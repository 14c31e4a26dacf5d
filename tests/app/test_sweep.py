"""``bouquet sweep``: a grid run point by point with one progress bar, then the comparison over it."""

import json
import re
import time

import pytest

from bouquet.app.cli import main
from bouquet.app.sweep import _Follower, parse_grid

CONFIG = """
name = "tiny_sweep"
algorithms = ["fedavg"]
[data]
name = "synthetic_linear"
num_clients = 6
num_clusters = 2
test_per_client = 20
[model]
name = "linear"
[run]
rounds = 4
clients_per_round = 6
batch_size = 4
eval_every = 2
checkpoint_every = 0
[train]
lr = 0.1
"""


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(CONFIG)
    return path


def test_sweep_runs_the_grid_once_per_method_and_compares_it(config, tmp_path, capsys):
    out = tmp_path / "sw"
    assert main(["sweep", str(config), "--algorithms", "fedavg,floral", "--seeds", "0,1",
                 "--grid", "algo.floral.router_temperature=1,2", "--set", "run.rounds=4", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [f"run directories: {out}", f"report: {out / 'compare' / 'report.html'}"]
    hot, cold = out / "algo.floral.router_temperature=2", out / "algo.floral.router_temperature=1"
    assert json.loads((cold / "summary.json").read_text())["algorithms"].keys() == {"fedavg", "floral"}
    assert list(json.loads((hot / "summary.json").read_text())["algorithms"]) == ["floral"]  # fedavg: run once
    assert "bouquet: note: sweep: fedavg at algo.floral.router_temperature=2 is the same method" in captured.err
    bars = re.findall(r"sweep: +\d+%\S* *(\d+)/(\d+)", captured.err)
    assert bars and bars[-1] == ("6", "6")  # one bar: 2 seeds x (fedavg + floral + floral)
    page = (out / "compare" / "report.html").read_text()
    rows = re.findall(r"<tr><td>([^<]*)</td><td>([^<]*)</td>", page.split("Run directories")[0])
    assert rows == [("fedavg", "0,1"), ("floral (algo.floral.router_temperature=1.0)", "0,1"),
                    ("floral (algo.floral.router_temperature=2.0)", "0,1")]
    assert main(["compare", str(out), "--out", str(tmp_path / "again")]) == 0  # a sweep directory compares again


def test_follower_counts_finished_runs(tmp_path):
    path = tmp_path / "metrics.jsonl"
    seen = []
    with _Follower(path, 4, seen.append):
        time.sleep(0.3)
        lines = [{"algorithm": "a", "seed": s, "round": r} for s in (0, 1) for r in (1, 2, 3, 4)]
        path.write_text("\n".join(json.dumps(x) for x in lines[:6]) + "\n")
        time.sleep(0.5)
        path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
        time.sleep(0.5)
    assert seen == [1, 2]


@pytest.mark.parametrize("args, message", [
    (["--grid", "run.lr=1", "--grid", "run.lr=2"], "--grid run.lr: given twice"),
    (["--grid", "run.rounds=2,4", "--set", "run.rounds=3"], "--grid run.rounds: also given with --set"),
    (["--grid", "run.rounds"], "--grid 'run.rounds': expected key=value1,value2"),
    (["--grid", "run.rounds=4,-1"], "run.rounds"),
    (["--algorithms", "fedavg,nope"], "--algorithms: unknown algorithm 'nope'"),
    (["--seeds", "0,x"], "--seeds: expected comma-separated integers"),
])
def test_bad_sweeps_are_one_line_errors_before_any_run(config, tmp_path, capsys, args, message):
    out = tmp_path / "bad"
    assert main(["sweep", str(config), "--out", str(out), "--no-progress", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bouquet: error: ") and err.count("\n") == 1 and message in err, err
    assert not out.exists()  # every grid point is validated before the first one runs


def test_parse_grid_keeps_order():
    assert parse_grid(["a.b=1,2", "c=x"], []) == [("a.b", ["1", "2"]), ("c", ["x"])]
