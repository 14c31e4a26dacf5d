"""Fixtures writing tiny IDX and CIFAR files into tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest
from datafile_writers import write_cifar_dir, write_idx_dir


@pytest.fixture
def idx_dir(tmp_path: Path) -> Path:
    d = tmp_path / "idx"
    write_idx_dir(d)
    return d


@pytest.fixture
def cifar10_dir(tmp_path: Path) -> Path:
    d = tmp_path / "c10"
    write_cifar_dir(d, "cifar10")
    return d


@pytest.fixture
def cifar100_dir(tmp_path: Path) -> Path:
    d = tmp_path / "c100"
    write_cifar_dir(d, "cifar100", per_file=100)
    return d
