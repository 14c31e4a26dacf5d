"""``bouquet compare``: runs grouped by method and seed, one comparison table and its figures."""

import re
import shutil
from pathlib import Path

import pytest

from bouquet.app.cli import main
from bouquet.app.compare import compare_methods, find_runs, method_key
from bouquet.app.config import parse_experiment
from bouquet.app.report_data import load_run
from bouquet.app.runner import run_experiment

RAW = {
    "name": "tiny_compare",
    "algorithms": ["fedavg", "floral"],
    "data": {"name": "synthetic_linear", "num_clients": 6, "num_clusters": 2, "test_per_client": 20},
    "model": {"name": "linear"},
    "run": {"rounds": 4, "clients_per_round": 6, "batch_size": 4, "eval_every": 2, "seeds": [0],
            "checkpoint_every": 0},
    "train": {"lr": 0.1},
}


def _run(out: Path, seeds: list[int], algorithms: list[str], **algo) -> Path:
    raw = {**RAW, "algorithms": algorithms, "run": {**RAW["run"], "seeds": seeds}, "algo": algo}
    run_experiment(parse_experiment(raw), out, progress=False)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("compare")
    return {"a": _run(root / "a", [0], ["fedavg", "floral"]),
            "b": _run(root / "b", [1], ["fedavg", "floral"], floral={}),
            "hot": _run(root / "hot", [0], ["floral"], floral={"router_temperature": 2})}


def test_seeds_of_one_method_are_pooled_and_configs_told_apart(runs):
    ms = compare_methods([load_run(runs[k]) for k in ("a", "b", "hot")])
    by = {m.label: m for m in ms}
    assert list(by) == ["fedavg", "floral (algo.floral.router_temperature=1.0)",
                        "floral (algo.floral.router_temperature=2.0)"]
    assert [s["seed"] for s in by["fedavg"].result["per_seed"]] == [0, 1] and set(by["fedavg"].curves) == {0, 1}
    last = [s["last"]["mean"] for s in by["fedavg"].result["per_seed"]]
    assert by["fedavg"].result["last"]["mean"] == pytest.approx(sum(last) / 2)
    assert by["fedavg"].result["last"]["std"] > 0
    assert set(by["floral (algo.floral.router_temperature=2.0)"].router) == {0}


def test_compare_writes_one_table_of_methods_and_the_figures(runs, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", str(runs["a"]), str(runs["b"]), str(runs["hot"]), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"report: {out / 'report.html'}"
    page = (out / "report.html").read_text()
    table = re.search(r'<table class="results">(.*?)</table>', page, re.S).group(1)
    assert "<th>method</th><th>seeds</th><th>last mse</th>" in table and "MB/round" in table and "overhead" in table
    rows = re.findall(r"<tr><td>([^<]*)</td><td>([^<]*)</td><td>([^<]*)</td>", table)
    assert [r[:2] for r in rows] == [("fedavg", "0,1"), ("floral (algo.floral.router_temperature=1.0)", "0,1"),
                                     ("floral (algo.floral.router_temperature=2.0)", "0")]
    assert "±" in rows[0][2] and "±" not in rows[2][2]  # two seeds: a spread; one seed: the value
    for stem in ("mse_vs_round", "mse_vs_mb", "mse_per_client", "mse_per_cluster"):
        assert (out / f"{stem}.png").stat().st_size > 1000
    assert "algo.floral.router_temperature=2.0" in (out / "mse_vs_round.svg").read_text()
    assert str(runs["b"]) in (out / "report.md").read_text()  # the sources table names every run directory


def test_duplicate_method_and_seed_is_an_error_naming_both(runs, tmp_path, capsys):
    twin = tmp_path / "twin"
    shutil.copytree(runs["a"], twin)
    assert main(["compare", str(runs["a"]), str(twin), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bouquet: error: compare: fedavg seed 0 is in both ") and err.count("\n") == 1
    assert str(runs["a"]) in err and str(twin) in err


def test_a_directory_of_runs_is_compared_as_them_all(runs, tmp_path):
    root = tmp_path / "sweep"
    for k in ("a", "hot"):
        shutil.copytree(runs[k], root / k)
    assert find_runs([root]) == [root / "a", root / "hot"]
    assert main(["compare", str(root)]) == 0 and (root / "compare" / "report.html").is_file()


def test_method_key_ignores_other_algorithms_and_bookkeeping():
    base = {"name": "x", "algorithms": ["fedavg"], "run": {"seeds": [0], "threads": 1, "rounds": 4},
            "algo": {"floral": {"rank": 0.01}}}
    other = {**base, "name": "y", "run": {"seeds": [5], "threads": 2, "rounds": 4}, "algo": {"floral": {"rank": 1}}}
    assert method_key(base, "fedavg") == method_key(other, "fedavg")
    assert method_key(base, "floral") != method_key(other, "floral")
    assert method_key(base, "fedavg") != method_key({**base, "run": {**base["run"], "rounds": 8}}, "fedavg")
