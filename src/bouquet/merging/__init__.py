"""Potara's merging maths: closed-form mixing weights, trace estimators and the delta-W merge (pure tensors).

The lambda grid oracle, which scores merged models, is ``bouquet.engine.lambda_oracle``. See
docs/potara.md for which parts are reconstructions of the (not fully public) paper.
"""

from .closed_form import (
    bias_from_distance,
    expected_quadratic_loss,
    lora_layers,
    merge_delta_w,
    mixing_weight,
    squared_distance,
)
from .estimators import (
    ESTIMATORS,
    client_spread,
    diagonal_fisher,
    iterate_trace,
    laplace_trace,
    sgd_trace,
    update_moments,
)

__all__ = ["ESTIMATORS", "bias_from_distance", "client_spread", "diagonal_fisher", "expected_quadratic_loss",
           "iterate_trace", "laplace_trace", "lora_layers", "merge_delta_w", "mixing_weight", "sgd_trace",
           "squared_distance", "update_moments"]
