"""Metrics that are not per-example scores: cluster recovery of learned routers."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import Tensor


def adjusted_rand_index(predicted: Tensor | Sequence[int], true: Tensor | Sequence[int]) -> float:
    """Adjusted Rand index of two clusterings of the same clients (1 = identical up to relabelling)."""
    # imported here: scikit-learn costs ~1 s of start-up in every Flower ClientApp process otherwise
    from sklearn.metrics import adjusted_rand_score

    p = np.asarray(predicted.tolist() if isinstance(predicted, Tensor) else predicted)
    t = np.asarray(true.tolist() if isinstance(true, Tensor) else true)
    if p.shape != t.shape:
        raise ValueError(f"clusterings differ in length: {p.shape} vs {t.shape}")
    return float(adjusted_rand_score(t, p))
