"""Registry of algorithms: a name, an options dataclass (``[algo.<name>]`` in a config) and a builder.

A builder receives a freshly initialised model, the federated dataset and the experiment, and
returns an ``Algorithm``. New algorithms register themselves with ``@register``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..data.federated import FederatedDataset
from .base import Algorithm
from .server_opt import build_server_optimizer

Builder = Callable[[nn.Module, FederatedDataset, Any, Any], Algorithm]


@dataclass(frozen=True)
class AlgorithmSpec:
    name: str
    options: type
    build: Builder
    summary: str


ALGORITHMS: dict[str, AlgorithmSpec] = {}


def register(name: str, options: type, summary: str) -> Callable[[Builder], Builder]:
    """Decorator adding a builder to ``ALGORITHMS`` under ``name``."""

    def wrap(fn: Builder) -> Builder:
        ALGORITHMS[name] = AlgorithmSpec(name, options, fn, summary)
        return fn

    return wrap


def server_optimizer_of(exp, lr_of=None):
    """The experiment's server optimizer (``[server]``)."""
    return build_server_optimizer(exp.server.optimizer, exp.server.lr, exp.server.momentum, lr_of)
