"""A run directory belongs to one experiment: config fingerprints, --allow-config-change, resume edge cases."""

from __future__ import annotations

import json
import shutil
import tomllib
from pathlib import Path

import pytest
import tomli_w

from bouquet.app.cli import main
from bouquet.app.config import parse_experiment, resolved_dict
from bouquet.app.rundir import changed_keys, fingerprint
from bouquet.checks import ConfigError
from bouquet.engine.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
CONFIG = str(ROOT / "configs" / "synthetic_linear.toml")
SETTINGS = ["--set", "run.rounds=8", "--set", "run.checkpoint_every=3", "--set", "run.eval_every=4"]


def _one_line_error(capsys, code: int) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("bouquet: error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(["run", CONFIG, *SETTINGS, "--out", str(out), "--no-progress"]) == 0
    return out


def _interrupted(finished: Path, out: Path) -> Path:
    """A copy of the finished run made to look killed after fedavg's round-6 checkpoint."""
    shutil.copytree(finished, out)
    for path in (out / "checkpoints").glob("*.ckpt"):
        if not path.name.startswith("fedavg") or not path.name.endswith("r0000006.ckpt"):
            path.unlink()
    (out / "summary.json").unlink()
    return out


def _edit(run_dir: Path, **changes) -> None:
    """Edit the run's config.toml: ``table__key=value``."""
    cfg = tomllib.loads((run_dir / "config.toml").read_text())
    for dotted, value in changes.items():
        table, key = dotted.split("__")
        cfg[table][key] = value
    (run_dir / "config.toml").write_text(tomli_w.dumps(cfg))


def test_checkpoints_and_run_dir_record_the_fingerprint(finished: Path) -> None:
    record = json.loads((finished / "fingerprint.json").read_text())
    config = tomllib.loads((finished / "config.toml").read_text())
    assert record["fingerprint"] == fingerprint(record["config"]) and record["bouquet_version"]
    assert changed_keys(record["config"], config) == []
    for path in (finished / "checkpoints").glob("*.ckpt"):
        assert load_checkpoint(path)["fingerprint"] == record["fingerprint"]


def test_resume_refuses_an_edited_config_naming_the_keys(tmp_path: Path, finished: Path, capsys) -> None:
    run = _interrupted(finished, tmp_path / "run")
    before = {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()}
    _edit(run, run__rounds=20, train__lr=0.3)
    line = _one_line_error(capsys, main(["run", "--resume", str(run), "--no-progress"]))
    assert "config.toml no longer matches" in line and "run.rounds, train.lr" in line and "0.1 -> 0.3" in line
    assert {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()} == before  # nothing touched
    assert not (run / "summary.json").exists()
    # allowing only the safe key is not enough: train.lr is still refused
    line = _one_line_error(capsys, main(["run", "--resume", str(run), "--allow-config-change", "run.rounds"]))
    assert "train.lr" in line and "run.rounds" not in line.split("changed: ")[1].split(" (")[0]


def test_allow_config_change_takes_only_safe_keys(tmp_path: Path, finished: Path, capsys) -> None:
    run = _interrupted(finished, tmp_path / "run")
    _edit(run, model__name="mlp")
    line = _one_line_error(capsys, main(["run", "--resume", str(run), "--allow-config-change", "model.name"]))
    assert "--allow-config-change: 'model.name' cannot change" in line
    line = _one_line_error(capsys, main(["run", CONFIG, "--allow-config-change", "run.rounds"]))
    assert "only with --resume" in line


def test_more_rounds_with_allow_config_change(tmp_path: Path, finished: Path, capsys) -> None:
    run = _interrupted(finished, tmp_path / "run")
    _edit(run, run__rounds=10)
    line = _one_line_error(capsys, main(["run", "--resume", str(run), "--no-progress"]))
    assert "run.rounds (run.rounds 8 -> 10); to accept, add --allow-config-change run.rounds" in line
    assert main(["run", "--resume", str(run), "--no-progress", "--allow-config-change", "run.rounds"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert all(s["rounds"] == 10 for a in summary["algorithms"].values() for s in a["per_seed"])
    rounds = [json.loads(line)["round"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rounds == list(range(1, 11)) * 2
    assert main(["run", "--resume", str(run), "--no-progress"]) == 0  # the accepted change stays accepted
    # a finished run can be extended too, but never shortened below a checkpoint
    _edit(run, run__rounds=5)
    line = _one_line_error(capsys, main(["run", "--resume", str(run), "--allow-config-change", "run.rounds"]))
    assert "run.rounds: expected at least 10" in line


def test_resume_before_the_first_checkpoint_starts_afresh(tmp_path: Path, finished: Path, capsys) -> None:
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(finished / "config.toml", run / "config.toml")  # what a run killed before its first checkpoint left
    assert main(["run", "--resume", str(run), "--no-progress"]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(notes) == 1 and notes[0].startswith(f"bouquet: note: --resume {run}: no checkpoint yet"), notes
    assert "starting it afresh" in notes[0]
    assert (run / "metrics.jsonl").read_text() == (finished / "metrics.jsonl").read_text()
    assert json.loads((run / "fingerprint.json").read_text())["fingerprint"] == \
        json.loads((finished / "fingerprint.json").read_text())["fingerprint"]


def test_resume_refuses_options_it_would_not_honour(tmp_path: Path, finished: Path, capsys) -> None:
    for option in (["--engine", "local"], ["--superlink", "127.0.0.1:9093"], ["--seeds", "1"]):
        line = _one_line_error(capsys, main(["run", "--resume", str(finished), *option]))
        assert f"drop {option[0]}" in line


@pytest.mark.parametrize("path", sorted((ROOT / "configs").rglob("*.toml")), ids=lambda p: p.name)
def test_shipped_configs_keep_their_fingerprint_through_config_toml(path: Path, tmp_path: Path) -> None:
    """What --resume reads back (config.toml) must fingerprint like what the run started with."""
    raw = tomllib.loads(path.read_text())
    try:
        exp = parse_experiment(raw)
    except ConfigError:  # a dataset without a default location (mnist, cifar): any directory will do
        exp = parse_experiment({**raw, "data": {**raw["data"], "path": str(tmp_path)}})
    resolved = resolved_dict(exp)
    again = resolved_dict(parse_experiment(tomllib.loads(tomli_w.dumps(resolved))))
    assert changed_keys(resolved, again) == [] and fingerprint(resolved) == fingerprint(again)
