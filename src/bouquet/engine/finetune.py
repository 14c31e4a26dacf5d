"""Local fine-tuning of personalized models before evaluation (FedAvg+FT, FedIT+FT), for every engine.

The algorithm's ``Finetune`` says which parameters move, for how many epochs and at which rate; the
run's state is never changed. The simulator fine-tunes clients in chunks, a Flower node one client at a
time: both call ``finetuned``, so the numbers are the same.
"""

from __future__ import annotations

from torch import Tensor

from ..algorithms import Algorithm, local_sgd, task_loss
from ..algorithms.contract import Params
from .autograd_training import train_sequential, train_vectorized
from .batching import FINETUNE, SplitArrays, round_batches


def finetuned(alg: Algorithm, personalized: Params, batches: dict[str, Tensor], *, vectorized: bool) -> Params:
    """``personalized`` [K, ...] after ``alg.finetune`` on ``batches`` [K, S, B, ...] (plain SGD)."""
    ft = alg.finetune
    if ft is None:
        return personalized
    trainable = {k: v for k, v in personalized.items() if ft.trainable(k)}
    frozen = {k: v for k, v in personalized.items() if not ft.trainable(k)}

    def loss(trainable, shared, frozen, batch):
        return task_loss(alg.apply({**frozen, **trainable}, batch["x"]), batch["y"], batch["w"], alg.objective)

    train = train_vectorized if vectorized else train_sequential
    with alg.mode(True):
        trained, _ = train(loss, local_sgd(ft.lr), trainable, {}, frozen, batches)
    return {**frozen, **{k: v.detach() for k, v in trained.items()}}


def finetune_batches(arrays: SplitArrays, clients: Tensor, *, seed: int, round_idx: int, batch_size: int,
                     epochs: int, shuffle: bool, streams: Tensor | None = None) -> dict[str, Tensor]:
    """The fine-tuning batches of ``clients`` (their own random stream, apart from training's)."""
    index, weight = round_batches(arrays, clients, seed=seed, round_idx=round_idx, batch_size=batch_size,
                                  epochs=epochs, purpose=FINETUNE, shuffle=shuffle, streams=streams)
    return arrays.gather(index, weight)

