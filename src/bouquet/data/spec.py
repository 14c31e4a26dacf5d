"""`DataSpec`: every option that decides which federated dataset is built, validated at construction."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields
from typing import Any

from bouquet.data.federated import DataError

SYNTHETIC = ("synthetic_linear", "synthetic_mlp")
BUNDLED = ("digits", "mnist5k")  # shipped inside Python packages, no official test split
IDX_DATASETS = ("mnist", "fashion_mnist")
CIFAR_DATASETS = ("cifar10", "cifar100")
TEXT_DATASETS = ("text_tasks",)  # bouquet.data.text: one text task per cluster, MiniLM features
LM_DATASETS = ("shakespeare_lm",)  # bouquet.data.shakespeare: one client per speaking character, next token
DATASETS = SYNTHETIC + BUNDLED + IDX_DATASETS + CIFAR_DATASETS + TEXT_DATASETS + LM_DATASETS
SHIFTS = ("none", "rotate", "label_shift", "cifar100_groups")
PARTITIONS = ("iid", "dirichlet")
DEFAULT_PATHS = {"fashion_mnist": "/usr/share/datasets/fashion-mnist"}


@dataclass(frozen=True)
class DataSpec:
    """Which federated dataset to build; invalid values raise `DataError` naming the field."""

    #: dataset name, one of `DATASETS`
    name: str
    #: number of clients K (client ids 0..K-1)
    num_clients: int
    #: number of clusters C; client k belongs to cluster k % C
    num_clusters: int = 1
    #: per-cluster shift: none | rotate ((360/C)*c degrees) | label_shift ((y+c) mod K) | cifar100_groups
    shift: str = "none"
    #: how rows are split among clients: iid | dirichlet (label skew)
    partition: str = "iid"
    #: Dirichlet concentration over classes (smaller = more skew)
    alpha: float = 0.5
    #: keep this fraction of each client's training rows (FLoRAL "5%" = 0.05), at least `min_train`
    fraction: float = 1.0
    #: lower bound on training rows per client for `fraction` and `dirichlet`
    min_train: int = 10
    #: exact number of training rows per client (None = the client's whole share)
    train_per_client: int | None = None
    #: exact number of test rows per client (None = the client's whole share)
    test_per_client: int | None = None
    #: test share of each client's rows for sources without an official test split, and synthetic data
    test_fraction: float = 0.2
    #: allow sampling with replacement within a client's train (or test) rows to reach the exact sizes
    resample: bool = False
    #: directory of the files for mnist / fashion_mnist / cifar10 / cifar100
    path: str | None = None
    #: seed of every random choice (partition, subsets, synthetic parameters)
    seed: int = 0
    #: per-channel standardisation of images with statistics of all clients' training rows
    normalize: bool = False
    #: text datasets: the checkpoint whose tokenizer makes the token ids (none: the bundled model's;
    #: text_tasks then uses cached MiniLM hidden states, a path gives token ids for [model] name = "hf")
    tokenizer: str | None = None
    #: text datasets: tokens per example (a language-modelling window, or a text's truncation length)
    max_tokens: int = 32
    #: shakespeare_lm: a character becomes a client when it has at least this many speeches
    min_lines: int = 40
    #: choose settings without test rows: > 0 evaluates every client on this fraction of its training rows
    #: (carved out, never trained on) instead of its test rows; 0 = the test rows
    validation: float = 0.0

    def __post_init__(self) -> None:
        _validate(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DataSpec:
        """Build a spec from a config mapping; unknown keys raise `DataError`."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise DataError(f"data.{unknown[0]}: unknown option; expected one of {sorted(known)}")
        for required in ("name", "num_clients"):
            if required not in values:
                raise DataError(f"data.{required}: missing required option")
        return cls(**values)

    def resolved_path(self) -> str | None:
        """The directory to read: `path` or the dataset's default."""
        return self.path if self.path is not None else DEFAULT_PATHS.get(self.name)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _fail(field: str, expected: str, got: Any) -> DataError:
    return DataError(f"data.{field}: expected {expected}, got {got!r}")


def _validate(s: DataSpec) -> None:
    """Check each field's type and range, then the combinations that make no sense."""
    if s.name not in DATASETS:
        raise _fail("name", f"one of {', '.join(DATASETS)}", s.name)
    for f in ("num_clients", "num_clusters", "min_train", "max_tokens", "min_lines"):
        v = getattr(s, f)
        if not _is_int(v) or v < 1:
            raise _fail(f, "an integer >= 1", v)
    if s.num_clusters > s.num_clients:
        raise _fail("num_clusters", f"at most num_clients ({s.num_clients})", s.num_clusters)
    if s.shift not in SHIFTS:
        raise _fail("shift", f"one of {', '.join(SHIFTS)}", s.shift)
    if s.partition not in PARTITIONS:
        raise _fail("partition", f"one of {', '.join(PARTITIONS)}", s.partition)
    if not _is_num(s.alpha) or s.alpha <= 0:
        raise _fail("alpha", "a number > 0", s.alpha)
    if not _is_num(s.fraction) or not 0 < s.fraction <= 1:
        raise _fail("fraction", "a number in (0, 1]", s.fraction)
    if not _is_num(s.validation) or not 0 <= s.validation < 1:
        raise _fail("validation", "a number in [0, 1) (0: evaluate on the test rows)", s.validation)
    if not _is_num(s.test_fraction) or not 0 <= s.test_fraction < 1:
        raise _fail("test_fraction", "a number in [0, 1)", s.test_fraction)
    if s.train_per_client is not None and (not _is_int(s.train_per_client) or s.train_per_client < 1):
        raise _fail("train_per_client", "None or an integer >= 1", s.train_per_client)
    if s.test_per_client is not None and (not _is_int(s.test_per_client) or s.test_per_client < 1):
        raise _fail("test_per_client", "None or an integer >= 1 (every client needs a test row)", s.test_per_client)
    if s.train_per_client is not None and s.fraction != 1.0:
        raise _fail("fraction", "1.0 when train_per_client is set (they both fix the train size)", s.fraction)
    for f in ("resample", "normalize"):
        if not isinstance(getattr(s, f), bool):
            raise _fail(f, "a bool", getattr(s, f))
    if not _is_int(s.seed):
        raise _fail("seed", "an integer", s.seed)
    _validate_combination(s)


def _validate_combination(s: DataSpec) -> None:
    """Options that depend on the dataset family."""
    if s.path is not None and not isinstance(s.path, str | os.PathLike):
        raise _fail("path", "None or a directory path", s.path)
    if s.tokenizer is not None and (not isinstance(s.tokenizer, str) or s.name not in TEXT_DATASETS + LM_DATASETS):
        raise _fail("tokenizer", f"None for {s.name} (only text datasets are tokenized)" if isinstance(
            s.tokenizer, str) else "None or a checkpoint path", s.tokenizer)
    if s.name in LM_DATASETS and (s.shift != "none" or s.partition != "iid" or s.normalize or s.path is not None):
        raise DataError(f"data.shift/partition/normalize/path: {s.name} takes none of them (each client is one "
                        "character's speeches; clusters are plays)")
    if s.name in SYNTHETIC + BUNDLED + TEXT_DATASETS and s.path is not None:
        raise _fail("path", f"None ({s.name} needs no files)", s.path)
    if s.name in ("mnist",) + CIFAR_DATASETS and s.path is None:
        raise DataError(f"data.path: expected the directory holding the {s.name} files, got None "
                        f"({s.name} has no default location)")
    if s.name in TEXT_DATASETS and s.shift not in ("none", "label_shift"):
        raise _fail("shift", f"'none' (each task its own outputs) or 'label_shift' (all tasks on the same "
                    f"outputs) for {s.name}", s.shift)
    if s.name in SYNTHETIC + TEXT_DATASETS:
        if s.name in SYNTHETIC and s.shift != "none":
            raise _fail("shift", f"'none' for {s.name} (its clusters come from the task itself)", s.shift)
        if s.normalize:
            raise _fail("normalize", f"False for {s.name} (not an image dataset)", s.normalize)
    if s.shift == "cifar100_groups" and s.name == "cifar100" and 100 % s.num_clusters:
        raise _fail("num_clusters", "a divisor of 100 with shift=cifar100_groups", s.num_clusters)
    if s.shift == "cifar100_groups" and s.name != "cifar100" and s.num_clusters > 10:
        raise _fail("num_clusters", f"at most 10 (the classes of {s.name}) with shift=cifar100_groups",
                    s.num_clusters)
