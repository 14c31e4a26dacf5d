"""data.validation: settings are chosen on rows carved from the training rows, never on test rows."""

import pytest
import torch

from bouquet.data import DataSpec, build_dataset
from bouquet.data.federated import DataError


def test_validation_rows_come_from_training_rows_and_test_rows_are_gone():
    spec = DataSpec(name="synthetic_linear", num_clients=6, train_per_client=20, test_per_client=10)
    full = build_dataset(spec)
    val = build_dataset(DataSpec(**{**spec.__dict__, "validation": 0.25}))
    assert val.meta["split"] == "validation"
    for c_full, c_val in zip(full.clients, val.clients, strict=True):
        train_ids = set(c_full.train_ids.tolist())
        assert set(c_val.test_ids.tolist()) <= train_ids  # evaluated on its own training rows
        assert not set(c_val.test_ids.tolist()) & set(c_val.train_ids.tolist())  # never trained on them
        assert not set(c_val.test_ids.tolist()) & set(c_full.test_ids.tolist())  # test rows unseen
        assert c_val.num_train + len(c_val.test_ids) == c_full.num_train
        assert len(c_val.test_ids) == 5
        kept = torch.isin(c_full.train_ids, c_val.train_ids)
        assert torch.equal(c_full.x_train[kept], c_val.x_train)


def test_validation_fraction_must_be_below_one():
    with pytest.raises(DataError, match="data.validation"):
        DataSpec(name="synthetic_linear", num_clients=2, validation=1.0)
