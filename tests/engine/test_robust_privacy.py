"""Client-private state (router logits, local adaptors, personal models) never appears in an upload."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from bouquet.algorithms import ALGORITHMS
from bouquet.app.config import load_experiment
from bouquet.app.experiment import build_algorithm
from bouquet.data import build_dataset
from bouquet.engine.simulator import Simulator
from bouquet.engine.validation import PrivacyError, check_private

ROOT = Path(__file__).resolve().parents[2]
PRIVATE_ALGORITHMS = sorted(n for n in ALGORITHMS if n not in ("fedavg", "fedavg_ft"))


@pytest.fixture(scope="module")
def setting():
    exp = load_experiment(ROOT / "configs" / "mnist5k_iid.toml", [
        "data.name='digits'", "data.num_clients=8", "data.num_clusters=2", "data.shift='label_shift'",
        "run.clients_per_round=4", "run.rounds=2", "model.hidden=16"])
    return exp, build_dataset(exp.data)


@pytest.mark.parametrize("name", PRIVATE_ALGORITHMS)
@pytest.mark.parametrize("vectorized", [True, False])
def test_no_private_state_in_uploads(setting, name: str, vectorized: bool) -> None:
    exp, data = setting
    alg, _ = build_algorithm(exp, data, name, 0)
    seen: list[dict] = []
    honest = alg.aggregate

    def recording_aggregate(server, uploads, n):  # observes what reaches the server, changes nothing
        seen.append({k: v.clone() for k, v in uploads.items()})
        return honest(server, uploads, n)

    alg = replace(alg, aggregate=recording_aggregate)
    sim = Simulator(alg, data, replace(exp.run.spec(), vectorized=vectorized), robust=exp.robust)
    state = sim.init_state()
    for _ in range(2):
        before = state
        state, rec = sim.run_round(state)
        uploads = seen[-1]
        ids = torch.tensor(rec["clients"])
        for key in uploads:
            assert not any(key.startswith(p) for p in alg.private_keys), f"{name} uploads private {key}"
            assert key not in state.clients, f"{name} uploads its client-state entry {key}"
        # By value too, for router logits (learned, never equal to anything public by chance): no upload row
        # holds a sampled client's logits, before or after the round. (FLoRAL does upload softmax(logits),
        # p(c|k), by design of the paper; that is a different tensor.)
        for cs in (before.clients, state.clients):
            for key, stacked in cs.items():
                if not key.startswith("router."):
                    continue
                for row, k in enumerate(ids.tolist()):
                    for ukey, u in uploads.items():
                        if u.shape[1:] == stacked[k].shape:
                            assert not torch.equal(u[row], stacked[k]), f"{name}: upload {ukey} carries {key}"


def test_check_private_rejects_a_leaking_upload() -> None:
    from bouquet.algorithms.contract import Algorithm

    alg = Algorithm(name="leaky", model=torch.nn.Linear(1, 1), objective="regression", init=None, broadcast=None,
                    client_init=None, loss=None, client_final=None, aggregate=None, personalize=None,
                    local_update=None, private_keys=("router.",))
    with pytest.raises(PrivacyError, match="router.logits"):
        check_private(alg, {"w": torch.zeros(2, 1), "router.logits": torch.zeros(2, 3)})
    check_private(alg, {"w": torch.zeros(2, 1)})
