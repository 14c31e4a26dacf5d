"""The hand-batched kernels earn trust at run time: their first local steps against autograd on ``loss``.

An algorithm's ``loss_spec`` is a declaration; nothing forces it to match its ``loss``. Before the
kernels train anything, ``CheckedTrainer`` runs the first ``steps`` local steps of the first round's
first ``clients`` clients both ways (kernels, and vmap + autograd on the algorithm's own loss and
update) and compares the parameter changes; if they differ it warns once and trains with autograd for
the rest of the run. The check runs on copies and under a forked RNG, so a run that passes it is
unchanged by it; a few clients keep its time and memory small next to a round's.

Both sides run in float64 when they can: a float32 step that is ill-conditioned (ScaledGD's
preconditioner right after B = 0, where 1 / ||B^T B|| is about 1e5) turns rounding differences of 1e-7
into 1e-4 of the next update, and a check in float32 would then reject correct kernels (it did for
Local Adaptor's CNN). An algorithm whose code pins float32 is checked in its own dtype.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from ..algorithms.contract import Batch, Params

Trainer = Callable[[Params, Mapping[str, Tensor], Mapping[str, Tensor], Batch], tuple[Params, Tensor]]


class KernelMismatchWarning(UserWarning):
    """The hand-batched kernels disagreed with autograd on the algorithm's loss; autograd is used instead."""


def update_mismatch(start: Params, a: Params, b: Params, rtol: float) -> str | None:
    """Which tensor's change differs between two trainings from ``start`` by more than ``rtol`` (relative), or None.

    Entries that are not finite must be so in both (a client that diverges diverges either way); the
    finite ones are compared by the norm of their difference against the norm of the update.
    """
    for k, s0 in start.items():
        da, db = (a[k] - s0).double(), (b[k] - s0).double()
        finite = torch.isfinite(da)
        if not torch.equal(finite, torch.isfinite(db)):
            return f"{k}: non-finite values in one training only"
        da, db = da[finite], db[finite]
        scale = float(db.norm())
        err = float((da - db).norm())
        if not err <= rtol * scale + 1e-12:
            return f"{k}: relative difference {err / max(scale, 1e-300):.2e} of the update (tolerance {rtol:g})"
    return None


class CheckedTrainer:
    """The kernels, once their first ``steps`` local steps match ``reference``'s; ``reference`` otherwise."""

    def __init__(self, kernels: Trainer, reference: Trainer, algorithm: str, steps: int = 2, clients: int = 4,
                 rtol: float = 1e-4):
        self.kernels, self.reference, self.algorithm = kernels, reference, algorithm
        self.steps, self.clients, self.rtol = steps, clients, rtol
        self.trusted: bool | None = None  # None: not checked yet
        self.reason: str | None = None

    @property
    def path(self) -> str:
        """What trains the clients (recorded in the run summary)."""
        if self.trusted is False:
            return "vmap + autograd (hand-batched kernels disagreed with the loss)"
        return "hand-batched kernels"

    def check(self, trainable: Params, shared: Mapping[str, Tensor], private: Mapping[str, Tensor],
              batches: Batch) -> bool:
        """Compare the first steps both ways; warn and remember when they differ."""
        few = slice(0, self.clients)
        first = {k: v[few, :self.steps] for k, v in batches.items()}
        start = {k: v[few].detach().clone() for k, v in trainable.items()}
        mine = {k: v[few] for k, v in private.items()}
        try:
            self.reason = self._compare(_wide(start), _wide(shared), _wide(mine), _wide(first))
        except (RuntimeError, TypeError):  # the algorithm's own code pins float32: check in its dtype
            self.reason = self._compare(start, shared, mine, first)
        self.trusted = self.reason is None
        if not self.trusted:
            warnings.warn(f"algorithm {self.algorithm!r}: the hand-batched kernels do not train its loss "
                          f"({self.reason}); its loss_spec does not describe its loss. Training with autograd "
                          f"instead.", KernelMismatchWarning, stacklevel=2)
        return self.trusted

    def _compare(self, start: Params, shared: Mapping[str, Tensor], private: Mapping[str, Tensor],
                 batches: Batch) -> str | None:
        device = next(iter(batches.values())).device
        cuda = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):  # both from the same RNG state: the same router noise draws
            rng = torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in cuda]
            by_kernels, _ = self.kernels(dict(start), shared, private, batches)
            torch.set_rng_state(rng[0])
            for d, state in zip(cuda, rng[1], strict=True):
                torch.cuda.set_rng_state(state, d)
            by_autograd, _ = self.reference(dict(start), shared, private, batches)
        return update_mismatch(start, by_kernels, by_autograd, self.rtol)

    def __call__(self, trainable: Params, shared: Mapping[str, Tensor], private: Mapping[str, Tensor],
                 batches: Batch) -> tuple[Params, Tensor]:
        if self.trusted is None:
            self.check(trainable, shared, private, batches)
        train = self.kernels if self.trusted else self.reference
        return train(trainable, shared, private, batches)


def _wide(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Floating tensors as float64 (copies where narrower); the rest as they are."""
    return {k: v.double() if v.is_floating_point() else v for k, v in tensors.items()}
