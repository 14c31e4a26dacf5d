"""Algorithms: the contract (``base``), the registry, and one module per method."""

from . import baselines, mixtures, peft_methods  # noqa: F401  (register fedavg*, floral*, ...; fedit*, potara, ...)
from .base import Algorithm, LocalOptimizer, payload_nbytes, task_loss, task_score
from .registry import ALGORITHMS, AlgorithmSpec, register

__all__ = ["ALGORITHMS", "Algorithm", "AlgorithmSpec", "LocalOptimizer", "payload_nbytes", "register",
           "task_loss", "task_score"]
