"""Federated datasets: synthetic FLoRAL tasks and image sources split among clients with cluster shifts."""

from bouquet.data.build import build_dataset
from bouquet.data.federated import ClientData, DataError, FederatedDataset
from bouquet.data.holdout import carve_validation
from bouquet.data.pooled import PooledClients
from bouquet.data.spec import DATASETS, PARTITIONS, SHIFTS, DataSpec

__all__ = ["DATASETS", "PARTITIONS", "SHIFTS", "ClientData", "DataError", "DataSpec", "FederatedDataset",
           "PooledClients", "build_dataset", "carve_validation"]
