"""bouquet: personalized federated fine-tuning with low-rank adaptors (FLoRAL, Potara and their baselines).

    import bouquet as bq

    data = bq.build_dataset(bq.DataSpec(name="digits", num_clients=20, num_clusters=2, shift="rotate"))
    model = bq.build_model("mlp", data.input_shape, data.num_outputs)
    alg = bq.floral(bq.wrap(model, num_adaptors=2), data.objective, lr=0.1)
    sim = bq.Simulator(alg, data, bq.RunSpec(rounds=50, clients_per_round=5, batch_size=16))
    state, records = sim.run()

Names are loaded on first use (``import bouquet`` itself imports nothing heavy).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    # algorithms: constructors, the contract, local steps, server optimizers, the registry
    "fedavg": "bouquet.algorithms.fedavg",
    "fedprox": "bouquet.algorithms.fedprox",
    "fedper": "bouquet.algorithms.fedper",
    "fedrep": "bouquet.algorithms.fedrep",
    "local": "bouquet.algorithms.local",
    "local_adaptor": "bouquet.algorithms.local_adaptor",
    "floral": "bouquet.algorithms.floral",
    "wrap": "bouquet.algorithms.floral",
    "ensemble": "bouquet.algorithms.ensemble",
    "ifca": "bouquet.algorithms.ifca",
    "lora_model": "bouquet.algorithms.lora",
    "partitioned_lora": "bouquet.algorithms.lora",
    "ditto": "bouquet.algorithms.lora",
    "apfl": "bouquet.algorithms.lora",
    "potara": "bouquet.algorithms.potara",
    "RouterConfig": "bouquet.algorithms.routing",
    "Algorithm": "bouquet.algorithms.contract",
    "LossSpec": "bouquet.algorithms.contract",
    "Finetune": "bouquet.algorithms.contract",
    "TrainConfig": "bouquet.algorithms.contract",
    "LocalUpdate": "bouquet.algorithms.local_update",
    "StepInfo": "bouquet.algorithms.local_update",
    "chain": "bouquet.algorithms.local_update",
    "sgd": "bouquet.algorithms.local_update",
    "local_sgd": "bouquet.algorithms.local_update",
    "proximal": "bouquet.algorithms.local_update",
    "server_sgd": "bouquet.algorithms.server_opt",
    "server_adam": "bouquet.algorithms.server_opt",
    "ALGORITHMS": "bouquet.algorithms.registry",
    "register": "bouquet.algorithms.registry",
    # adapters
    "inject": "bouquet.adapters.inject",
    "MixtureModel": "bouquet.adapters.mixture",
    "merge_lora_models": "bouquet.adapters.merge",
    # data and models
    "DataSpec": "bouquet.data.spec",
    "build_dataset": "bouquet.data.build",
    "FederatedDataset": "bouquet.data.federated",
    "ClientData": "bouquet.data.federated",
    "PooledClients": "bouquet.data.pooled",
    "carve_validation": "bouquet.data.holdout",
    "DatasetInfo": "bouquet.data.federated",
    "write_node_dirs": "bouquet.data.node_dir",
    "load_node_dir": "bouquet.data.node_dir",
    "load_federation": "bouquet.data.node_dir",
    "build_model": "bouquet.models",
    # engine
    "Simulator": "bouquet.engine.simulator",
    "RunSpec": "bouquet.engine.spec",
    "RunState": "bouquet.engine.rounds",
    "RobustConfig": "bouquet.engine.robust",
    "merge_diagnostics": "bouquet.engine.lambda_oracle",
    # experiments
    "Experiment": "bouquet.app.config",
    "load_experiment": "bouquet.app.config",
    "parse_experiment": "bouquet.app.config",
    "build_algorithm": "bouquet.app.experiment",
    "run_experiment": "bouquet.app.runner",
    "resume_experiment": "bouquet.app.runner",
    # errors
    "ConfigError": "bouquet.checks",
    "DataError": "bouquet.data.federated",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'bouquet' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*__all__, "__version__"])

