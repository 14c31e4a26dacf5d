"""Algorithms: the contract, the local-update transforms, the registry, and one module per method.

Importing this package registers every method (``ALGORITHMS``).
"""

from . import (  # noqa: F401  (each module registers its methods)
    ensemble,
    fedavg,
    fedper,
    fedprox,
    fedrep,
    floral,
    ifca,
    local,
    local_adaptor,
    lora,
    potara,
)
from .contract import (
    Algorithm,
    ChooseByLoss,
    Finetune,
    LossSpec,
    Merging,
    TrainConfig,
    payload_nbytes,
    task_loss,
    task_score,
)
from .local_update import LocalUpdate, StepInfo, Transform, chain, local_sgd, proximal, sgd
from .registry import ALGORITHMS, AlgorithmSpec, BuildContext, register
from .routing import RouterConfig
from .server_opt import ServerConfig, ServerOptimizer, server_adam, server_sgd

__all__ = ["ALGORITHMS", "Algorithm", "AlgorithmSpec", "BuildContext", "ChooseByLoss", "Finetune", "LocalUpdate",
           "LossSpec", "Merging", "RouterConfig", "ServerConfig", "ServerOptimizer", "StepInfo", "TrainConfig",
           "Transform", "chain", "local_sgd", "payload_nbytes", "proximal", "register", "server_adam", "server_sgd",
           "sgd", "task_loss", "task_score"]
