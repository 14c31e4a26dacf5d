"""The command line: a run writes its files and table; a bad config is a one-line error and status 2."""

import json
import subprocess
import sys
import tomllib
from pathlib import Path

from bouquet.app.cli import main

CONFIG = """
name = "tiny"
algorithms = ["fedavg", "local"]
[data]
name = "digits"
num_clients = 6
num_clusters = 2
shift = "label_shift"
[model]
name = "mlp"
hidden = 16
[run]
rounds = 4
clients_per_round = 3
batch_size = 16
eval_every = 2
[train]
lr = 0.1
"""


def test_run_writes_outputs_and_prints_table(tmp_path, capsys):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(CONFIG)
    out = tmp_path / "run"
    code = main(["run", str(cfg), "--out", str(out), "--algorithms", "fedavg,local", "--no-progress",
                 "--set", "run.seeds=[0, 1]"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "fedavg" in printed and "local" in printed and "last accuracy" in printed
    resolved = tomllib.loads((out / "config.toml").read_text())
    assert resolved["run"]["seeds"] == [0, 1] and resolved["algorithms"] == ["fedavg", "local"]
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 2 * 2 * 4  # algorithms x seeds x rounds
    evals = [x for x in lines if "eval" in x]
    assert {x["round"] for x in evals} == {2, 4}
    assert all(len(x["eval"]["per_client"]) == 6 for x in evals)
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["algorithms"]) == {"fedavg", "local"}
    fa = summary["algorithms"]["fedavg"]
    assert len(fa["per_seed"]) == 2 and 0.0 <= fa["last"]["mean"] <= 1.0
    assert fa["params"]["per_client"] == 64 * 16 + 16 + 16 * 10 + 10


def test_misspelled_key_is_one_line_error(tmp_path):
    cfg = tmp_path / "typo.toml"
    cfg.write_text(CONFIG.replace("batch_size", "bach_size"))
    proc = subprocess.run([sys.executable, "-m", "bouquet", "run", str(cfg), "--out", str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "run.bach_size" in err[0], proc.stderr
    assert not (tmp_path / "r" / "summary.json").exists()


def test_bad_override_is_reported(tmp_path, capsys):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(CONFIG)
    assert main(["run", str(cfg), "--set", "run.rounds=-1", "--out", str(tmp_path / "r")]) == 2
    assert "run.rounds" in capsys.readouterr().err


def test_demo_config_is_shipped():
    assert (Path(__file__).resolve().parents[2] / "configs" / "demo.toml").is_file()
