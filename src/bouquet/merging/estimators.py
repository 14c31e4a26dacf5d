"""Trace estimators for Potara's mixing weight: tr(Sigma) of the federated and the local LoRA.

Reconstructions (docs/potara.md, reference notes section 1c), selectable by name:

* ``laplace_fisher``: Laplace/precision view, Sigma ~ (n F + damping)^-1 with F the diagonal empirical
  Fisher of the client's data at the model; the trace is curvature-weighted, tr(F Sigma), by default.
* ``sgd_fisher``: SGD-stationary view (Mandt et al. 2017): tr(H Sigma) ~ (lr / 2B) tr(F).
* ``dispersion``: no Fisher; Sigma_L is the diagonal variance of the local LoRA iterates (one per
  round, SWAG-diagonal), Sigma_F the across-client variance of the federated uploads divided by the
  number of clients (computed by the server).

Every function works on one client's tensors and is safe under ``torch.func.vmap``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor
from torch.func import grad, vmap

from .closed_form import reduce_groups

#: every Potara estimator: ours ('data', in merging.data_weight), the paper's, and the earlier reconstructions
ESTIMATORS = ("data", "paper", "sgd_fisher", "laplace_fisher", "dispersion")
Params = dict[str, Tensor]
LogLik = Callable[[Params, Tensor, Tensor], Tensor]  # (params, x [1, ...], y [1, ...]) -> log p(y | x)


def per_example_grads(loglik: LogLik, params: Mapping[str, Tensor], x: Tensor, y: Tensor) -> Params:
    """d log p(y_i | x_i) / d theta for every example i (leading dim = examples)."""

    def one(xi: Tensor, yi: Tensor) -> Params:
        return grad(loglik)(dict(params), xi.unsqueeze(0), yi.unsqueeze(0))

    return vmap(one)(x, y)


def fisher_from_grads(grads: Mapping[str, Tensor], w: Tensor) -> Params:
    """Diagonal empirical Fisher E_w[g^2] from per-example gradients (w = 0: padding)."""
    total = w.sum().clamp_min(1.0)
    shape = lambda g: (-1,) + (1,) * (g.dim() - 1)  # noqa: E731
    return {k: (g.pow(2) * w.to(g.dtype).reshape(shape(g))).sum(0) / total for k, g in grads.items()}


def diagonal_fisher(loglik: LogLik, params: Mapping[str, Tensor], x: Tensor, y: Tensor, w: Tensor) -> Params:
    """Diagonal empirical Fisher E_w[(d log p(y|x) / d theta)^2] over the weighted examples (w = 0: padding)."""
    return fisher_from_grads(per_example_grads(loglik, params, x, y), w)


def laplace_trace(fisher: Mapping[str, Tensor], n: Tensor | float, damping: float,
                  layers: list[str] | None = None, weighted: bool = True) -> Tensor:
    """Laplace posterior Sigma = (n F + damping)^-1 (diagonal): one scalar, or one value per layer.

    ``weighted`` (default) gives the curvature-weighted trace tr(F Sigma) = sum_j F_jj / (n F_jj + damping),
    about (number of well-determined parameters) / n: directions the data does not constrain do not
    count, as they do not change the loss. Unweighted: tr Sigma = sum_j 1 / (n F_jj + damping), which
    the damping dominates whenever many LoRA entries have a tiny Fisher.
    """
    def term(f: Tensor) -> Tensor:
        return (f / (n * f + damping)).sum() if weighted else (1.0 / (n * f + damping)).sum()

    return reduce_groups({k: term(f) for k, f in fisher.items()}, layers)


def sgd_trace(fisher: Mapping[str, Tensor], lr: float, batch_size: int, layers: list[str] | None = None,
              scale: Tensor | float = 1.0) -> Tensor:
    """tr(H Sigma) ~ scale * (lr / 2B) * tr(F); ``scale`` < 1 for an average over several clients' noise."""
    return reduce_groups({k: scale * lr / (2 * batch_size) * f.sum() for k, f in fisher.items()}, layers)


def update_moments(first: Mapping[str, Tensor], second: Mapping[str, Tensor], params: Mapping[str, Tensor],
                   count: Tensor, window: int) -> tuple[Params, Params]:
    """Running first/second moments of the iterates: a plain mean over the first ``window`` iterates,
    then an exponential average with weight 1/window (the last ~window iterates dominate)."""
    rate = 1.0 / torch.clamp(count + 1, max=window).to(next(iter(params.values())).dtype)
    new_first = {k: first[k] + rate * (p - first[k]) for k, p in params.items()}
    new_second = {k: second[k] + rate * (p * p - second[k]) for k, p in params.items()}
    return new_first, new_second


def iterate_trace(first: Mapping[str, Tensor], second: Mapping[str, Tensor],
                  layers: list[str] | None = None) -> Tensor:
    """tr of the diagonal iterate covariance: sum_j (E[p^2] - E[p]^2), clipped at 0."""
    return reduce_groups({k: (second[k] - first[k] ** 2).clamp_min(0.0).sum() for k in first}, layers)


def client_spread(uploads: Mapping[str, Tensor], weights: Tensor, layers: list[str] | None = None) -> Tensor:
    """Across-client spread of stacked uploads [K, ...]: weighted variance per entry, summed, over K_eff.

    Dividing by the effective number of clients K_eff = (sum w)^2 / sum w^2 turns the spread of the
    client updates into the variance of their weighted mean, the federated model.
    """
    w = weights.to(torch.float64)
    w = w / w.sum()
    k_eff = 1.0 / (w * w).sum()
    out = {}
    for name, u in uploads.items():
        ww = w.to(u.dtype).reshape((-1,) + (1,) * (u.dim() - 1))
        mean = (ww * u).sum(0)
        out[name] = ((ww * (u - mean) ** 2).sum(0)).sum() / k_eff.to(u.dtype)
    return reduce_groups(out, layers)
