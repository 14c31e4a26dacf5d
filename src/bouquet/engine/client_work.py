"""One client's share of a round and of an evaluation, as the simulator's client loop computes them.

For engines that run clients one at a time somewhere else (a Flower SuperNode): the same batches
(``round_batches``, seeded by seed, round and client id), the same local step
(``train_sequential`` with the algorithm's loss and update), the same fine-tuning and scoring, so a
client's numbers do not depend on where it runs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..algorithms import Algorithm
from ..algorithms.contract import ClientStates, Params, ServerState
from .autograd_training import train_sequential
from .batching import TRAIN, SplitArrays, round_batches
from .evaluation import score_params
from .finetune import finetune_batches, finetuned
from .spec import RunSpec


def initial_client_states(alg: Algorithm, seed: int, clusters: Tensor) -> ClientStates:
    """Every client's row of ``alg.init`` with the run's generator (what the simulator starts from)."""
    return alg.init(torch.Generator().manual_seed(seed), clusters)[1]


def _one(d: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.unsqueeze(0) for k, v in d.items()}


def _row0(d: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v[0] for k, v in d.items()}


def client_view(arrays: SplitArrays, row: int) -> SplitArrays:
    """One client's rows (``row`` of ``arrays``) as a one-client SplitArrays."""
    return SplitArrays(arrays.x, arrays.y, arrays.offsets[row:row + 1], arrays.sizes[row:row + 1], arrays.rows)


def train_client(alg: Algorithm, spec: RunSpec, seed: int, train: SplitArrays, cid: int, payload: dict[str, Tensor],
                 private: dict[str, Tensor], round_idx: int) -> tuple[dict[str, Tensor], dict[str, Tensor], float, int]:
    """client_init, local steps and client_final of client ``cid`` (``train`` holds its rows as its only
    client): (upload, new private state, mean training loss, n_k)."""
    index, weight = round_batches(train, torch.tensor([0]), seed=seed, round_idx=round_idx, batch_size=spec.batch_size,
                                  epochs=spec.local_epochs, steps=spec.local_steps, purpose=TRAIN,
                                  shuffle=spec.shuffle, streams=torch.tensor([cid]))
    batches = train.gather(index, weight)
    n = train.sizes[0]
    with alg.mode(True):
        trainable = _one(alg.client_init(payload, private, _row0(batches)))
        trained, losses = train_sequential(alg.loss, alg.local_update, trainable, payload, _one(private), batches)
        upload, new_private = alg.client_final(_row0(trained), payload, private, n, _row0(batches))
    upload = {key: v.detach() for key, v in upload.items()}
    new_private = {key: v.detach() for key, v in new_private.items()}
    return upload, {**private, **new_private}, float(losses[0]), int(n)


def is_finite_update(upload: dict[str, Tensor], loss: float) -> bool:
    """The driver's acceptance test (finite loss and values); a client keeps its old state otherwise."""
    ok = bool(torch.isfinite(torch.tensor(loss)))
    return ok and all(bool(torch.isfinite(v).all()) for v in upload.values() if v.is_floating_point())


def personalized_for_eval(alg: Algorithm, spec: RunSpec, seed: int, train: SplitArrays, server: ServerState,
                          private: dict[str, Tensor], cid: int, round_idx: int) -> Params:
    """The client's personalized parameters, fine-tuned first when the algorithm asks (as the simulator does)."""
    with torch.no_grad():
        params = alg.personalize(server, private)
    if alg.finetune is None:
        return params
    batches = finetune_batches(train, torch.tensor([0]), seed=seed, round_idx=round_idx, batch_size=spec.batch_size,
                               epochs=alg.finetune.epochs, shuffle=spec.shuffle, streams=torch.tensor([cid]))
    return _row0(finetuned(alg, _one({k: v.clone() for k, v in params.items()}), batches, vectorized=False))


def evaluate_client(alg: Algorithm, spec: RunSpec, seed: int, train: SplitArrays, test: SplitArrays,
                    server: ServerState, private: dict[str, Tensor], cid: int,
                    round_idx: int) -> tuple[float, float, int]:
    """Score, loss and test size of client ``cid``'s personalized model (``train``/``test``: its rows only)."""
    params = personalized_for_eval(alg, spec, seed, train, server, private, cid, round_idx)
    with torch.no_grad(), alg.mode(False):
        s = score_params(alg, lambda cs: cs, _one(params), test, torch.tensor([0]), vectorized=False)
    return float(s.score[0]), float(s.loss[0]), int(s.num_examples[0])
