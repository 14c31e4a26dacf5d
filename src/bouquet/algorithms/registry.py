"""Registry of algorithms: a name, an options dataclass (``[algo.<name>]`` in a config) and a builder.

A builder receives a freshly initialised (and, with ``[pretrain]``, pretrained) model and a
``BuildContext`` of typed settings, and returns an ``Algorithm``; it does no I/O and no training.
Each method module registers itself with ``@register``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from .contract import Algorithm, Objective, TrainConfig
from .server_opt import ServerConfig, ServerOptimizer


@dataclass(frozen=True)
class BuildContext:
    """What a builder may know of the run: the objective, the federation's shape and the optimizers."""

    objective: Objective
    num_clusters: int
    total_examples: int
    train: TrainConfig
    server: ServerConfig

    def server_optimizer(self, lr_of: Callable[[str], float] | None = None) -> ServerOptimizer:
        """The ``[server]`` optimizer, optionally with a learning rate per parameter name."""
        return self.server.build(lr_of)


Builder = Callable[[nn.Module, BuildContext, Any], Algorithm]


@dataclass(frozen=True)
class AlgorithmSpec:
    """A registered algorithm: its options class, builder and one-line summary."""

    name: str
    options: type
    build: Builder
    summary: str


ALGORITHMS: dict[str, AlgorithmSpec] = {}


def register(name: str, options: type, summary: str) -> Callable[[Builder], Builder]:
    """Decorator adding a builder to ``ALGORITHMS`` under ``name``."""

    def wrap(fn: Builder) -> Builder:
        if name in ALGORITHMS:
            raise ValueError(f"algorithm {name!r} is registered twice")
        ALGORITHMS[name] = AlgorithmSpec(name, options, fn, summary)
        return fn

    return wrap


@dataclass(frozen=True)
class NoOptions:
    """This algorithm has no options of its own."""
