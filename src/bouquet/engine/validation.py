"""Checks on client uploads before aggregation: privacy (no private state leaves) and sanity.

A rejected upload is counted and reported per client; the round proceeds with the rest.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
from torch import Tensor

from ..algorithms import Algorithm

log = logging.getLogger("bouquet.engine")


class PrivacyError(RuntimeError):
    """An algorithm tried to upload client-private state (a bug in the algorithm, never data)."""


def check_private(alg: Algorithm, uploads: Mapping[str, Tensor]) -> None:
    """Fail loudly if any upload key belongs to the algorithm's private client state."""
    for key in uploads:
        if any(key.startswith(p) for p in alg.private_keys):
            raise PrivacyError(f"algorithm {alg.name!r} uploads private client state {key!r}")


def upload_problem(upload: Mapping[str, Tensor], expected: Mapping[str, tuple[tuple[int, ...], torch.dtype]],
                   max_norm: float | None = None) -> str | None:
    """Why one client's upload must be rejected (missing/extra key, shape, dtype, NaN/Inf, norm), or None."""
    missing = sorted(set(expected) - set(upload))
    if missing:
        return f"missing keys {missing[:3]}"
    extra = sorted(set(upload) - set(expected))
    if extra:
        return f"unexpected keys {extra[:3]}"
    sq = 0.0
    for k, (shape, dtype) in expected.items():
        t = upload[k]
        if tuple(t.shape) != tuple(shape):
            return f"{k}: shape {tuple(t.shape)}, expected {tuple(shape)}"
        if t.dtype != dtype:
            return f"{k}: dtype {t.dtype}, expected {dtype}"
        if t.is_floating_point():
            if not bool(torch.isfinite(t).all()):
                return f"{k}: NaN or Inf values"
            sq += float(t.double().pow(2).sum())
    if max_norm is not None and sq ** 0.5 > max_norm:
        return f"update norm {sq ** 0.5:.3g} above the limit {max_norm:.3g}"
    return None


def nonfinite_rows(rows: Tensor) -> Tensor:
    """Which rows of [K, D] hold a NaN or an Inf, exactly, at the cost of one row sum in the usual case.

    A NaN or Inf anywhere makes the row's sum non-finite, so rows with a finite sum are clean; a
    non-finite sum can also come from finite values overflowing, so those rows are checked element-wise.
    """
    bad = ~torch.isfinite(rows.sum(dim=1))
    suspects = bad.nonzero().flatten()
    if len(suspects):
        bad[suspects] = ~torch.isfinite(rows[suspects]).all(dim=1)
    return bad


def validate_uploads(uploads: Mapping[str, Tensor], losses: Tensor, ids: Tensor | None = None,
                     norms: Tensor | None = None, max_norm: float | None = None,
                     round_idx: int | None = None) -> tuple[Tensor, dict]:
    """Per-client acceptance of stacked uploads [K, ...]: a finite training loss, finite values, a sane norm.

    ``norms`` are the clients' update norms (see ``robust.update_norms``), checked against ``max_norm``.
    The report names the rejected clients (ids when given, else positions) and why; each is logged.
    """
    num = losses.shape[0]
    reasons: list[str | None] = [None] * num
    finite_loss = torch.isfinite(losses).cpu()
    for i in range(num):
        if not bool(finite_loss[i]):
            reasons[i] = f"training diverged (loss {float(losses[i])})"
    for k, v in uploads.items():
        if v.is_floating_point():
            bad = nonfinite_rows(v.reshape(num, -1) if num else v.reshape(0, 1)).cpu()  # no client: nothing bad
            for i in bad.nonzero().flatten().tolist():
                reasons[i] = reasons[i] or f"{k}: NaN or Inf values"
    if norms is not None and max_norm is not None:
        for i in (norms > max_norm).nonzero().flatten().tolist():
            reasons[i] = reasons[i] or f"update norm {float(norms[i]):.3g} above robust.max_update_norm {max_norm:.3g}"
    ok = torch.tensor([r is None for r in reasons], dtype=torch.bool)
    names = ids.tolist() if ids is not None else list(range(num))
    rejected = [names[i] for i in range(num) if reasons[i] is not None]
    for i in range(num):
        if reasons[i] is not None:
            log.warning("round %s: update of client %s rejected: %s", round_idx, names[i], reasons[i])
    report = {"rejected": rejected,
              "rejected_reasons": {str(names[i]): reasons[i] for i in range(num) if reasons[i] is not None}
              } if rejected else {}
    return ok, report


def example_batch(input_shape: tuple[int, ...], objective: str, target_shape: tuple[int, ...] = ()) -> dict:
    """One synthetic example as a client's batches [S=1, B=1, ...]: zeros, label 0, weight 1.

    Language modelling: token ids 0 and next-token targets 0 (int64).
    """
    if objective == "language_modeling":
        zeros = torch.zeros(1, 1, *input_shape, dtype=torch.long)
        return {"x": zeros, "y": zeros.clone(), "w": torch.ones(1, 1)}
    x = torch.zeros(1, 1, *input_shape)
    y = torch.zeros(1, 1, dtype=torch.long) if objective == "classification" else torch.zeros(1, 1, *target_shape)
    return {"x": x, "y": y, "w": torch.ones(1, 1)}


def upload_spec(alg: Algorithm, payload: Mapping[str, Tensor], client_state: Mapping[str, Tensor],
                batches: Mapping[str, Tensor]) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Keys, shapes and dtypes of a correct upload: ``client_init`` then ``client_final`` on ``batches``
    (no training), e.g. from ``example_batch``; what a server checks untrusted replies against."""
    with torch.no_grad(), alg.mode(False):
        trainable = alg.client_init(dict(payload), dict(client_state), dict(batches))
        n = torch.tensor(int(batches["w"].sum()))
        upload, _ = alg.client_final(trainable, dict(payload), dict(client_state), n, dict(batches))
    return {k: (tuple(v.shape), v.dtype) for k, v in upload.items()}
