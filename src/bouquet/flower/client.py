"""One client's share of a round, computed exactly as the local engine's sequential path does.

Batches come from ``engine.batching.round_batches`` over the round's whole sample (so padding and
shapes equal the local engine's), local SGD from ``engine.training.train_sequential``, scores from
``engine.evaluation.score_params``: the same functions, called for one client.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..algorithms.base import LocalOptimizer, Params, ServerState, task_loss
from ..engine.batching import FINETUNE, TRAIN, SplitArrays, round_batches
from ..engine.evaluation import score_params
from ..engine.training import train_sequential
from ..engine.validation import check_private
from .task import Task

# id(task) -> (task, alg.init client states); the task is kept so that its id cannot be reused
_INITIAL: dict[int, tuple[Task, dict[str, Tensor]]] = {}


def _initial_states(task: Task) -> dict[str, Tensor]:
    entry = _INITIAL.get(id(task))
    if entry is None or entry[0] is not task:
        if len(_INITIAL) >= 4:  # tasks are cached per process (task.load_task); keep as few
            _INITIAL.clear()
        gen = torch.Generator().manual_seed(task.spec.seed)
        entry = _INITIAL[id(task)] = (task, task.alg.init(gen, task.data.clusters)[1])
    return entry[1]


def initial_client_state(task: Task, cid: int) -> dict[str, Tensor]:
    """Client ``cid``'s row of ``alg.init`` (same generator seed as the local engine)."""
    return {k: v[cid].clone() for k, v in _initial_states(task).items()}


def _one(d: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.unsqueeze(0) for k, v in d.items()}


def _row0(d: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v[0] for k, v in d.items()}


def train_client(task: Task, payload: dict[str, Tensor], private: dict[str, Tensor], cid: int,
                 sampled: list[int], round_idx: int) -> tuple[dict[str, Tensor], dict[str, Tensor], float, int]:
    """client_init, local SGD and client_final of client ``cid``: (upload, new private state, loss, n_k)."""
    alg, spec = task.alg, task.spec
    ids = torch.tensor(sampled, dtype=torch.long)
    index, weight = round_batches(task.train, ids, seed=spec.seed, round_idx=round_idx, batch_size=spec.batch_size,
                                  epochs=spec.local_epochs, steps=spec.local_steps, purpose=TRAIN,
                                  shuffle=spec.shuffle)
    k = sampled.index(cid)
    batches = task.train.gather(index[k:k + 1], weight[k:k + 1])
    n = task.data.train_sizes()[cid]
    trainable = _one(alg.client_init(payload, private, _row0(batches)))
    trained, losses = train_sequential(alg.loss, alg.optimizer, trainable, payload, _one(private), batches)
    extra = (_row0(batches),) if alg.final_batches else ()  # e.g. Potara's Fisher traces need the data
    upload, new_private = alg.client_final(_row0(trained), payload, private, n, *extra)
    check_private(alg, upload)
    upload = {key: v.detach() for key, v in upload.items()}
    new_private = {key: v.detach() for key, v in new_private.items()}
    return upload, {**private, **new_private}, float(losses[0]), int(n)


def is_finite_update(upload: dict[str, Tensor], loss: float) -> bool:
    """The local engine's acceptance test (finite loss and values); a client keeps its old state otherwise."""
    ok = bool(torch.isfinite(torch.tensor(loss)))
    return ok and all(bool(torch.isfinite(v).all()) for v in upload.values() if v.is_floating_point())


def _single(arrays: SplitArrays, cid: int) -> SplitArrays:
    """A view of one client's rows as a one-client SplitArrays (client index 0)."""
    return SplitArrays(arrays.x, arrays.y, arrays.offsets[cid:cid + 1], arrays.sizes[cid:cid + 1])


def _finetuned(task: Task, server: ServerState, private: dict[str, Tensor], cid: int, round_idx: int) -> Params:
    """Personalized params after local fine-tuning, as ``Simulator.finetune`` computes them."""
    alg, spec = task.alg, task.spec
    keep = alg.finetune_filter or (lambda name: True)
    opt = LocalOptimizer(lr=spec.finetune_lr if spec.finetune_lr is not None else alg.optimizer.lr)
    with torch.no_grad():
        params = alg.personalize(server, private)
    trainable = {k: v.unsqueeze(0).clone() for k, v in params.items() if keep(k)}
    frozen = {k: v.unsqueeze(0).clone() for k, v in params.items() if not keep(k)}

    def loss(tr, shared, fr, batch):
        return task_loss(alg.apply({**fr, **tr}, batch["x"]), batch["y"], batch["w"], alg.task)

    index, weight = round_batches(task.train, torch.tensor([cid]), seed=spec.seed, round_idx=round_idx,
                                  batch_size=spec.batch_size, epochs=spec.finetune_epochs, purpose=FINETUNE,
                                  shuffle=spec.shuffle)
    trained, _ = train_sequential(loss, opt, trainable, {}, frozen, task.train.gather(index, weight))
    return {**_row0(frozen), **{k: v[0].detach() for k, v in trained.items()}}


def evaluate_client(task: Task, server: ServerState, private: dict[str, Tensor], cid: int,
                    round_idx: int) -> tuple[float, float, int]:
    """Score, loss and test size of client ``cid``'s personalized (optionally fine-tuned) model."""
    alg = task.alg
    view = _single(task.test, cid)
    if task.spec.finetune_epochs > 0:
        params = _finetuned(task, server, private, cid, round_idx)
        states, fn = _one(params), (lambda cs: cs)
    else:
        states, fn = _one(private), (lambda cs: alg.personalize(server, cs))
    with torch.no_grad():
        s = score_params(alg, fn, states, view, torch.tensor([0]), vectorized=False)
    return float(s.score[0]), float(s.loss[0]), int(s.num_examples[0])
