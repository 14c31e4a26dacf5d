"""``bouquet export``: a run on a Hugging Face model keeps each client's adapter, and the CLI writes one."""

from __future__ import annotations

import pytest
import torch

from bouquet.app.cli import main

peft = pytest.importorskip("peft")
safetensors = pytest.importorskip("safetensors.torch")

CONFIG = """
name = "export_cli"
algorithms = ["fedit", "apfl"]
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
rounds = 1
clients_per_round = 4
batch_size = 4
local_steps = 1
eval_every = 1
[train]
lr = 0.5
"""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("export")
    (d / "c.toml").write_text(CONFIG)
    assert main(["run", str(d / "c.toml"), "--out", str(d / "run"), "--no-progress"]) == 0
    return d / "run"


def test_run_keeps_every_clients_adapter(run_dir):
    kept = sorted(p.name for p in (run_dir / "adapters" / "fedit-seed0").iterdir())
    assert kept == [f"client_{k}" for k in range(4)]
    assert not (run_dir / "adapters" / "apfl-seed0").exists()  # APFL mixes two models' outputs: no adapter


def test_export_writes_the_kept_adapter(run_dir, tmp_path, capsys):
    assert main(["export", str(run_dir), "--client", "2", "--algorithm", "fedit", "--out", str(tmp_path / "a")]) == 0
    assert "peft adapter:" in capsys.readouterr().out
    mine = safetensors.load_file(tmp_path / "a" / "adapter_model.safetensors")
    kept = safetensors.load_file(run_dir / "adapters" / "fedit-seed0" / "client_2" / "adapter_model.safetensors")
    assert mine.keys() == kept.keys() and all(torch.equal(mine[k], kept[k]) for k in mine)
    assert any("classifier" in k for k in mine)  # the fresh head travels with the adapter


@pytest.mark.parametrize("args, message", [
    (["--client", "9", "--algorithm", "fedit"], "--client: expected 0..3, got 9"),
    (["--client", "0"], "--algorithm: the run has several algorithms"),
    (["--client", "0", "--algorithm", "apfl"], "mixes several models' outputs"),
    (["--client", "0", "--algorithm", "fedit", "--seed", "4"], "--seed: expected one of [0]"),
])
def test_export_errors_are_one_line(run_dir, tmp_path, capsys, args, message):
    assert main(["export", str(run_dir), *args, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_init_from_a_peft_adapter(run_dir, tmp_path):
    """[init] peft_adapter: a new run's initial adaptors are the adapter's (query/value of every layer)."""
    from bouquet.app.config import load_experiment
    from bouquet.app.experiment import build_algorithm, dataset_for_seed
    from bouquet.app.init_adapter import read_peft_adapter

    assert main(["export", str(run_dir), "--client", "1", "--algorithm", "fedit", "--out", str(tmp_path / "a")]) == 0
    (tmp_path / "c.toml").write_text(CONFIG.replace('algorithms = ["fedit", "apfl"]', 'algorithms = ["local_lora"]')
                                     + f'[init]\npeft_adapter = "{tmp_path / "a"}"\n')
    exp = load_experiment(tmp_path / "c.toml")
    data = dataset_for_seed(exp, 0)
    alg, _ = build_algorithm(exp, data, "local_lora", 0)
    _, clients = alg.init(torch.Generator().manual_seed(0), data.clusters)
    adapter = read_peft_adapter(tmp_path / "a")
    assert len(adapter) == 12  # query and value of MiniLM's 6 layers
    for path, (a, b) in adapter.items():
        key = f"local.model.hf.{path}"
        assert torch.equal(clients[f"{key}.lora_A"][3, 0], a)
        assert torch.allclose(clients[f"{key}.lora_B"][3, 0], b)


def test_init_adapter_that_matches_nothing(tmp_path):
    from bouquet.app.init_adapter import read_peft_adapter
    from bouquet.checks import ConfigError

    with pytest.raises(ConfigError, match=r"init.peft_adapter: .*adapter_config.json not found"):
        read_peft_adapter(tmp_path)
