"""Mixing: the router's pi, the shared context that carries it to the layers, and MixtureModel."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn


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


def mixture_weights(
    logits: Tensor,
    *,
    training: bool = False,
    noise_std: float = 0.0,
    floor: float = 0.0,
    temperature: float = 1.0,
) -> Tensor:
    """pi = softmax((logits + noise) / temperature), then clamp(min=floor) without renormalising.

    The noise is the official uniform noise_std * U[0, 1), drawn only when training and noise_std > 0
    (under vmap that needs `randomness="different"` or `"same"`). The official floor is 0.01: with a
    one-hot router every other adaptor still contributes 1%; the sum of pi may then exceed 1.
    """
    if training and noise_std > 0:
        logits = logits + noise_std * torch.rand_like(logits)
    pi = torch.softmax(logits / temperature, dim=-1)
    return pi.clamp(min=floor) if floor > 0 else pi


class Router(nn.Module):
    """Holds a client's router ``logits`` [C] (init 0: pi starts uniform).

    How logits become pi (noise, floor, temperature) is the algorithm's setting, not the module's:
    algorithms pass pi to ``MixtureModel.forward`` explicitly; called without pi, the model uses the
    plain softmax of these logits.
    """

    def __init__(self, num_adaptors: int) -> None:
        super().__init__()
        if num_adaptors < 1:
            raise ValueError(f"num_adaptors must be >= 1, got {num_adaptors}")
        self.num_adaptors = num_adaptors
        self.logits = nn.Parameter(torch.zeros(num_adaptors))

    def forward(self) -> Tensor:
        """pi = softmax(logits)."""
        return torch.softmax(self.logits, dim=-1)

    def extra_repr(self) -> str:
        return f"num_adaptors={self.num_adaptors}"


class MixtureModel(nn.Module):
    """Wraps `model` (whose adaptor layers share `context`) and a `router`; names: `model.*`, `router.logits`.

    `forward(*args, pi=None, **kwargs)` takes pi (the algorithm's mixture weights, used as given) or,
    without one, the softmax of the router's logits, exposes it to every adaptor layer for the
    duration of the call and calls the wrapped model.
    """

    def __init__(self, model: nn.Module, router: Router, context: MixtureContext | None = None) -> None:
        super().__init__()
        self.model = model
        self.router = router
        self.context = context if context is not None else MixtureContext()
        # Bind every adaptor layer to this model's context, so layers built separately still see pi.
        for m in model.modules():
            if isinstance(getattr(m, "context", None), MixtureContext):
                m.context = self.context

    @property
    def num_adaptors(self) -> int:
        """C, the number of adaptors per layer."""
        return self.router.num_adaptors

    def forward(self, *args: Any, pi: Tensor | None = None, **kwargs: Any) -> Any:
        """Run the wrapped model with pi (the one given, or softmax(logits)) visible to every adaptor layer."""
        if pi is None:
            pi = self.router()
        with self.context.use(pi):
            return self.model(*args, **kwargs)
