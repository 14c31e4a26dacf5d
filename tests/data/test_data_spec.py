"""DataSpec validation: each bad field raises DataError naming the field and what was expected."""

from __future__ import annotations

import pytest

from bouquet.data import DATASETS, DataError, DataSpec


@pytest.mark.parametrize(("changes", "field"), [
    ({"name": "imagenet"}, "data.name"),
    ({"num_clients": 0}, "data.num_clients"),
    ({"num_clients": 2.5}, "data.num_clients"),
    ({"num_clusters": 0}, "data.num_clusters"),
    ({"num_clusters": 11}, "data.num_clusters"),
    ({"shift": "blur"}, "data.shift"),
    ({"partition": "shards"}, "data.partition"),
    ({"alpha": 0.0}, "data.alpha"),
    ({"alpha": float("nan")}, "data.alpha"),
    ({"fraction": 1.5}, "data.fraction"),
    ({"fraction": 0.0}, "data.fraction"),
    ({"min_train": 0}, "data.min_train"),
    ({"train_per_client": 0}, "data.train_per_client"),
    ({"test_per_client": -1}, "data.test_per_client"),
    ({"test_fraction": 1.0}, "data.test_fraction"),
    ({"resample": "yes"}, "data.resample"),
    ({"normalize": 1}, "data.normalize"),
    ({"seed": "0"}, "data.seed"),
    ({"path": "/tmp"}, "data.path"),
    ({"fraction": 0.5, "train_per_client": 5}, "data.fraction"),
])
def test_bad_field_names_the_field(changes: dict, field: str) -> None:
    values = {"name": "digits", "num_clients": 10, **changes}
    with pytest.raises(DataError, match=field.replace(".", r"\.")) as e:
        DataSpec(**values)
    assert "expected" in str(e.value)


def test_fraction_message_is_explicit() -> None:
    with pytest.raises(DataError, match=r"data\.fraction: expected a number in \(0, 1\], got 1\.5"):
        DataSpec("digits", 4, fraction=1.5)


def test_family_specific_rules() -> None:
    with pytest.raises(DataError, match=r"data\.path"):
        DataSpec("mnist", 4)  # no default location
    with pytest.raises(DataError, match=r"data\.path"):
        DataSpec("cifar10", 4)
    with pytest.raises(DataError, match=r"data\.shift"):
        DataSpec("synthetic_linear", 4, 2, shift="rotate")
    with pytest.raises(DataError, match=r"data\.normalize"):
        DataSpec("synthetic_mlp", 4, normalize=True)
    assert DataSpec("fashion_mnist", 4).resolved_path() == "/usr/share/datasets/fashion-mnist"


def test_from_dict() -> None:
    assert DataSpec.from_dict({"name": "digits", "num_clients": 3}).num_clients == 3
    with pytest.raises(DataError, match=r"data\.colour: unknown option"):
        DataSpec.from_dict({"name": "digits", "num_clients": 3, "colour": 1})
    with pytest.raises(DataError, match=r"data\.num_clients: missing"):
        DataSpec.from_dict({"name": "digits"})


def test_dataset_names() -> None:
    assert set(DATASETS) == {"synthetic_linear", "synthetic_mlp", "digits", "mnist5k", "mnist", "fashion_mnist",
                             "cifar10", "cifar100", "text_tasks", "shakespeare_lm"}
