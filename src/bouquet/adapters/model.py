"""MixtureModel: the user's model with adaptor layers, plus the router that mixes them."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from .context import MixtureContext
from .router import Router


class MixtureModel(nn.Module):
    """Wraps `model` (whose adaptor layers share `context`) and a `router`; names: `model.*`, `router.logits`.

    `forward(*args, pi=None, **kwargs)` computes pi once from the router (or takes a fixed external
    pi, e.g. for the optimal-router oracle, used as given), exposes it to every adaptor layer for
    the duration of the call and calls the wrapped model.
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

    def mixture_weights(self) -> Tensor:
        """The pi this model would use in its current mode (noise included when training)."""
        return self.router.weights(self.training)

    def forward(self, *args: Any, pi: Tensor | None = None, **kwargs: Any) -> Any:
        """Run the wrapped model with pi (the router's, or the one given) visible to every adaptor layer."""
        if pi is None:
            pi = self.router.weights(self.training)
        with self.context.use(pi):
            return self.model(*args, **kwargs)
