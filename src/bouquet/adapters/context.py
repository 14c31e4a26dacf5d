"""The shared mixture context: how one forward's mixture weights pi reach every adaptor layer."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor


class MixtureContext:
    """Holds the mixture weights pi [C] for the duration of one `MixtureModel` forward.

    Layers keep a reference to one shared context instead of receiving pi as an argument, so the
    user's model runs unchanged. A stack (not a single slot) keeps nested or re-entrant calls safe.
    It is plain Python state, so it works under `functional_call`, `vmap` and `grad` (pi is then
    whatever tensor, batched or not, the traced forward computed).
    """

    def __init__(self) -> None:
        self._stack: list[Tensor] = []

    @property
    def pi(self) -> Tensor | None:
        """The innermost active pi, or None outside a mixture forward."""
        return self._stack[-1] if self._stack else None

    @contextmanager
    def use(self, pi: Tensor) -> Iterator[Tensor]:
        """Make `pi` visible to the layers inside the `with` block, restoring the previous one after."""
        self._stack.append(pi)
        try:
            yield pi
        finally:
            self._stack.pop()

    def __deepcopy__(self, memo: dict) -> MixtureContext:
        # A copy must not share live state with the original; during a forward there is nothing to copy.
        return MixtureContext()


def current_pi(context: MixtureContext, num_adaptors: int, like: Tensor) -> Tensor:
    """The active pi, or [1] for a single adaptor used outside a `MixtureModel` (plain LoRA)."""
    pi = context.pi
    if pi is None:
        if num_adaptors == 1:
            return torch.ones(1, dtype=like.dtype, device=like.device)
        raise RuntimeError(
            f"this mixture layer has {num_adaptors} adaptors but no mixture weights are set; "
            "call it through MixtureModel (or wrap the call in `context.use(pi)`)"
        )
    if pi.shape != (num_adaptors,):
        raise ValueError(f"mixture weights must have shape ({num_adaptors},), got {tuple(pi.shape)}")
    return pi
