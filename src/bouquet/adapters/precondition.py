"""LoRA gradient preconditioning (ScaledGD / Riemannian LoRA) as a pure, vmappable dict transform."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

_LINEAR_NDIM = 3  # lora_A [C, r, in] / lora_B [C, out, r]
_CONV_NDIM = 5  # lora_A [C, r, in, kh, kw] / lora_B [C, out, r, kh, kw]


def _eye_like(gram: Tensor, eps: float) -> Tensor:
    return eps * torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)


def precondition_linear(lora_A: Tensor, lora_B: Tensor, grad_A: Tensor, grad_B: Tensor,
                        eps: float = 1e-5) -> tuple[Tensor, Tensor]:
    """grad_A <- (B^T B + eps I)^-1 grad_A, grad_B <- grad_B (A A^T + eps I)^-1, batched over leading dims."""
    gram_b = lora_B.mT @ lora_B  # [..., r, r]
    gram_a = lora_A @ lora_A.mT  # [..., r, r]
    if gram_b.shape[-1] == 1:  # rank 1 (every 1% adaptor of the MNIST MLP): the solve is a division
        return grad_A / (gram_b + eps), grad_B / (gram_a + eps)
    new_A = torch.linalg.solve(gram_b + _eye_like(gram_b, eps), grad_A)
    # X (G + eps I) = grad_B  <=>  (G + eps I)^T X^T = grad_B^T; the Gram is symmetric.
    new_B = torch.linalg.solve(gram_a + _eye_like(gram_a, eps), grad_B.mT).mT
    return new_A, new_B


def precondition_conv(lora_A: Tensor, lora_B: Tensor, grad_A: Tensor, grad_B: Tensor,
                      eps: float = 1e-5, batch_dims: int = 0) -> tuple[Tensor, Tensor]:
    """Divide each adaptor's conv gradients by the Frobenius norm (+ eps) of the other factor's Gram.

    There is no cheap exact inverse for conv factors, so like the official code we use a scalar
    preconditioner per adaptor: the Gram is taken over channels for each kernel position,
    G_A[a, b, ...] = sum_o B[o, a, ...] B[o, b, ...] (for grad_A) and
    G_B[a, b, ...] = sum_i A[a, i, ...] A[b, i, ...] (for grad_B).
    """
    lead = batch_dims + 1  # client dims (outside vmap) plus the adaptor dim C
    gram_b = torch.einsum("...oakl,...obkl->...abkl", lora_B, lora_B)
    gram_a = torch.einsum("...aikl,...bikl->...abkl", lora_A, lora_A)
    norm_b = torch.linalg.vector_norm(gram_b.flatten(lead), dim=-1)
    norm_a = torch.linalg.vector_norm(gram_a.flatten(lead), dim=-1)
    expand = (None,) * 4
    return grad_A / (norm_b + eps)[(..., *expand)], grad_B / (norm_a + eps)[(..., *expand)]


def precondition_lora_grads(params: Mapping[str, Tensor], grads: Mapping[str, Tensor], eps: float = 1e-5,
                            batch_dims: int = 0) -> dict[str, Tensor]:
    """Precondition every `<layer>.lora_A` / `<layer>.lora_B` gradient pair in `grads`; others pass through.

    Linear adaptors get the exact ScaledGD preconditioner per adaptor c (torch.linalg.solve, batched
    over C); conv adaptors the scalar Gram-norm one (see `precondition_conv`). Biases, norm
    adaptors, base and router gradients are returned untouched. Shapes are per client; under
    `torch.func.vmap` over a client dim that is automatic, otherwise pass `batch_dims=1` for stacked
    dicts. Pure: returns a new dict.
    """
    out = dict(grads)
    for name in grads:
        if not name.endswith(".lora_A"):
            continue
        prefix = name[: -len("lora_A")]
        name_b = prefix + "lora_B"
        if name_b not in grads:
            continue
        A, B = params[name], params[name_b]
        ndim = A.dim() - batch_dims
        if ndim == _LINEAR_NDIM:
            out[name], out[name_b] = precondition_linear(A, B, grads[name], grads[name_b], eps)
        elif ndim == _CONV_NDIM:
            out[name], out[name_b] = precondition_conv(A, B, grads[name], grads[name_b], eps, batch_dims)
        else:
            raise ValueError(f"{name}: unexpected adaptor shape {tuple(A.shape)}, batch_dims={batch_dims}")
    return out
