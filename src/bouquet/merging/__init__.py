"""Potara's merging maths: closed-form mixing weights, trace estimators, the delta-W merge, the grid oracle.

See docs/potara.md for which parts are reconstructions of the (not fully public) paper.
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
from .oracle import GRID, carve_validation, closed_form_lambdas, lambda_scores, oracle_lambdas

__all__ = ["ESTIMATORS", "GRID", "bias_from_distance", "carve_validation", "client_spread", "closed_form_lambdas",
           "diagonal_fisher", "expected_quadratic_loss", "iterate_trace", "lambda_scores", "laplace_trace",
           "lora_layers", "merge_delta_w", "mixing_weight", "oracle_lambdas", "sgd_trace", "squared_distance",
           "update_moments"]
