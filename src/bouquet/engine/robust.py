"""Robust aggregation of client uploads, and a seeded simulated attack for experiments.

Both act on the stacked uploads ``[K, ...]`` of one round, between validation and the algorithm's own
``aggregate``, so every algorithm gets them without code of its own. Only *shared* keys are touched:
upload keys that are also in the broadcast payload, with the same shape and a floating dtype (the
model parameters a client trained). Other upload keys (FLoRAL's mixture weights p(c|k), counts, ...)
pass through unchanged and are aggregated by the algorithm as usual.

- ``clip``: each client's update ``u_k - payload`` is scaled down to norm at most ``tau`` (over all
  shared keys together); ``tau`` is ``clip_norm`` or, when unset, the ``clip_quantile`` (default 0.5,
  the median) of the round's update norms: adaptive, and attackers fewer than ``1 - clip_quantile`` of
  the round cannot move it (a lower quantile tolerates more attackers and clips more honest clients).
- ``trimmed_mean`` / ``median``: per coordinate over the round's clients, unweighted (a client's
  example count is not trusted: it is part of what an attacker controls). The robust value then
  replaces that key in EVERY client's row, so whatever weighted mean the algorithm computes (by
  n_k, or FLoRAL's routed p(k|c) weights) returns the robust value itself, while non-shared keys keep
  the algorithm's own aggregation. The price: algorithm-specific per-key weighting of the shared keys
  is ignored, and with trimmed mean/median every adaptor moves to the same robust value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from ..checks import require
from .validation import validate_uploads

AGGREGATIONS = ("mean", "clip", "trimmed_mean", "median")
ATTACKS = ("none", "scale", "nan")


@dataclass(frozen=True)
class RobustConfig:
    """Defences against bad client updates (``[robust]``), and a simulated attack for experiments only.

    ``aggregation``: mean (the algorithm's own) | clip (each update's norm clipped to ``clip_norm``, or
    to the ``clip_quantile`` of the round's update norms when unset; 0.5 = median) | trimmed_mean
    (``trim_fraction`` cut from each end per coordinate) | median (coordinate-wise).
    ``max_update_norm`` rejects updates above it outright. ``attack`` makes a seeded ``attack_fraction``
    of clients send scaled (``attack_scale``) or NaN updates.
    """

    #: 'mean' (the algorithm's own), 'clip', 'trimmed_mean' or 'median' (coordinate-wise)
    aggregation: str = "mean"
    #: with clip: each update's norm clipped to this (none: to the clip_quantile of the round's norms)
    clip_norm: float | None = None
    #: with clip and no clip_norm: quantile of the round's update norms to clip to (0.5 = median)
    clip_quantile: float = 0.5
    #: with trimmed_mean: fraction cut from each end per coordinate, in [0, 0.5)
    trim_fraction: float = 0.1
    #: reject any update whose norm exceeds this (none: no limit)
    max_update_norm: float | None = None
    #: simulated attack for experiments: 'none', 'scale' (scaled updates) or 'nan' (NaN updates)
    attack: str = "none"
    #: seeded fraction of clients that attack
    attack_fraction: float = 0.2
    #: factor the 'scale' attack multiplies updates by
    attack_scale: float = 1e3

    def check(self, s: str) -> None:
        require(self.aggregation in AGGREGATIONS, f"{s}.aggregation", f"one of {list(AGGREGATIONS)}",
                self.aggregation)
        require(self.clip_norm is None or self.clip_norm > 0, f"{s}.clip_norm", "none or a number > 0",
                self.clip_norm)
        require(0 < self.clip_quantile <= 1, f"{s}.clip_quantile", "a number in (0, 1]", self.clip_quantile)
        require(0 <= self.trim_fraction < 0.5, f"{s}.trim_fraction", "a number in [0, 0.5)", self.trim_fraction)
        require(self.max_update_norm is None or self.max_update_norm > 0, f"{s}.max_update_norm",
                "none or a number > 0", self.max_update_norm)
        require(self.attack in ATTACKS, f"{s}.attack", f"one of {list(ATTACKS)}", self.attack)
        require(0 <= self.attack_fraction <= 1, f"{s}.attack_fraction", "a number in [0, 1]", self.attack_fraction)

# Seeds the choice of malicious clients apart from every other stream of the run.
_ATTACK_STREAM = 104729


def shared_keys(uploads: Mapping[str, Tensor], payload: Mapping[str, Tensor]) -> list[str]:
    """Upload keys that are model parameters sent down this round (same key, shape, floating dtype)."""
    return [k for k, v in uploads.items()
            if k in payload and v.is_floating_point() and tuple(v.shape[1:]) == tuple(payload[k].shape)]


def update_norms(uploads: Mapping[str, Tensor], payload: Mapping[str, Tensor]) -> Tensor:
    """Per-client L2 norm of ``upload - payload`` over all shared keys together, in float64: [K]."""
    keys = shared_keys(uploads, payload)
    num = next(iter(uploads.values())).shape[0] if uploads else 0
    sq = torch.zeros(num, dtype=torch.float64)
    for k in keys:
        d = (uploads[k].double() - payload[k].double().unsqueeze(0)).reshape(num, -1)
        sq += d.pow(2).sum(dim=1).cpu()
    return sq.sqrt()


def malicious_clients(num_clients: int, fraction: float, seed: int) -> Tensor:
    """A seeded boolean mask of ``round(fraction * num_clients)`` attacking clients (fixed for the run)."""
    count = round(fraction * num_clients)
    perm = torch.randperm(num_clients, generator=torch.Generator().manual_seed(seed * 7919 + _ATTACK_STREAM))
    mask = torch.zeros(num_clients, dtype=torch.bool)
    mask[perm[:count]] = True
    return mask


def attack_uploads(uploads: dict[str, Tensor], payload: Mapping[str, Tensor], ids: Tensor, cfg: RobustConfig,
                   num_clients: int, seed: int) -> dict[str, Tensor]:
    """Simulated attack (experiments only): malicious sampled clients scale their update or send NaN."""
    if cfg.attack == "none" or not uploads:
        return uploads
    bad = malicious_clients(num_clients, cfg.attack_fraction, seed)[ids.cpu()]
    if not bool(bad.any()):
        return uploads
    out = dict(uploads)
    for k in shared_keys(uploads, payload):
        u, p = uploads[k], payload[k].unsqueeze(0).to(uploads[k].dtype)
        mask = bad.to(u.device).reshape(-1, *([1] * (u.dim() - 1)))
        hostile = p + cfg.attack_scale * (u - p) if cfg.attack == "scale" else torch.full_like(u, float("nan"))
        out[k] = torch.where(mask, hostile, u)
    return out


def robust_uploads(uploads: dict[str, Tensor], payload: Mapping[str, Tensor], cfg: RobustConfig | None
                   ) -> dict[str, Tensor]:
    """Uploads with the configured robust rule applied to the shared keys (``mean``: unchanged)."""
    if cfg is None or cfg.aggregation == "mean" or not uploads:
        return uploads
    keys = shared_keys(uploads, payload)
    if cfg.aggregation == "clip":
        return _clip(uploads, payload, keys, cfg.clip_norm, cfg.clip_quantile)
    out = dict(uploads)
    for k in keys:
        u = uploads[k]
        value = coordinate_median(u) if cfg.aggregation == "median" else trimmed_mean(u, cfg.trim_fraction)
        # The same robust row for every client: any weighted mean of identical rows is that row.
        out[k] = value.unsqueeze(0).expand_as(u)
    return out


def _clip(uploads: dict[str, Tensor], payload: Mapping[str, Tensor], keys: list[str],
          clip_norm: float | None, quantile: float = 0.5) -> dict[str, Tensor]:
    norms = update_norms({k: uploads[k] for k in keys}, payload)
    # torch.median/quantile of an even count differ (lower middle vs interpolation): keep median for 0.5.
    adaptive = norms.median() if quantile == 0.5 else torch.quantile(norms, quantile)
    tau = clip_norm if clip_norm is not None else float(adaptive)
    # Clients at or under the threshold keep their exact upload (factor 1, no round trip through a delta).
    factor = torch.where(norms > tau, tau / norms.clamp_min(1e-300), torch.ones_like(norms))
    out = dict(uploads)
    if bool((factor < 1).any()):
        for k in keys:
            u = uploads[k]
            p = payload[k].unsqueeze(0).to(u.dtype)
            f = factor.to(device=u.device, dtype=u.dtype).reshape(-1, *([1] * (u.dim() - 1)))
            out[k] = torch.where(f < 1, p + f * (u - p), u)
    return out


def coordinate_median(stacked: Tensor) -> Tensor:
    """Coordinate-wise median over the leading dim (the mean of the two middle values for an even count)."""
    num = stacked.shape[0]
    s = stacked.sort(dim=0).values
    if num % 2:
        return s[num // 2]
    return (s[num // 2 - 1] + s[num // 2]) / 2


def trimmed_mean(stacked: Tensor, fraction: float) -> Tensor:
    """Coordinate-wise mean after dropping ``floor(fraction * K)`` smallest and largest values."""
    num = stacked.shape[0]
    cut = int(fraction * num)
    if cut == 0:
        return stacked.mean(dim=0)
    return stacked.sort(dim=0).values[cut:num - cut].mean(dim=0)


def guard_uploads(uploads: dict[str, Tensor], losses: Tensor, payload: Mapping[str, Tensor], ids: Tensor,
                  cfg: RobustConfig | None, num_clients: int, seed: int, round_idx: int
                  ) -> tuple[dict[str, Tensor], Tensor, dict]:
    """The engine's screening step: the simulated attack (if configured), then validation of every upload."""
    if cfg is not None:
        uploads = attack_uploads(uploads, payload, ids, cfg, num_clients, seed)
    max_norm = cfg.max_update_norm if cfg is not None else None
    norms = update_norms(uploads, payload) if max_norm is not None else None
    accepted, report = validate_uploads(uploads, losses, ids, norms, max_norm, round_idx)
    return uploads, accepted, report
