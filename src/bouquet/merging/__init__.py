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
from .data_weight import delta_distance, delta_spread, delta_w, fold_mask, fold_trace
from .estimators import (
    ESTIMATORS,
    client_spread,
    diagonal_fisher,
    fisher_from_grads,
    iterate_trace,
    laplace_trace,
    per_example_grads,
    sgd_trace,
    update_moments,
)
from .paper import gradient_correlation, merge_factors, paper_weight

__all__ = ["ESTIMATORS", "bias_from_distance", "client_spread", "delta_distance", "delta_spread", "delta_w",
           "diagonal_fisher", "expected_quadratic_loss", "fisher_from_grads", "fold_mask", "fold_trace",
           "gradient_correlation", "iterate_trace", "laplace_trace", "lora_layers", "merge_delta_w",
           "merge_factors", "mixing_weight", "paper_weight", "per_example_grads", "sgd_trace",
           "squared_distance", "update_moments"]
