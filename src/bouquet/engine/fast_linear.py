"""A batch-friendly ``F.linear`` for training many clients at once: weight gradients come out contiguous.

Under ``vmap`` with a per-client weight, PyTorch's own ``linear`` computes the weight gradient as
``x^T g`` and returns its transpose, a strided view; every later elementwise op on it (the SGD
update, preconditioning, weight decay) then walks memory against the grain, which on CPU costs
more than the matmul itself for the 784x200 layer of the MNIST MLP. ``FastLinear`` computes
``g^T x`` instead, so the gradient has the weight's own layout. The maths is the same linear map.

``fast_linear()`` is a context manager that routes every ``F.linear`` (``nn.Linear`` and the base
layer inside ``MixtureLinear``) through it, without touching the user's model.
"""

from __future__ import annotations

import torch
import torch._C._functorch as _functorch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode


class FastLinear(torch.autograd.Function):
    """y = x W^T + b with gradients x: g W, W: g^T x (weight layout), b: sum of g; vmap-able."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:  # type: ignore[override]
        out = torch.matmul(x, weight.mT)
        return out if bias is None else out + bias

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # type: ignore[override]
        x, weight, bias = inputs
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        # Under vmap every needs_input_grad reads True; the data fed to the first layer needs no gradient,
        # and skipping it saves a matmul as large as the forward.
        ctx.input_grad = _may_need_grad(x)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        grad_x = torch.matmul(grad, weight) if ctx.needs_input_grad[0] and ctx.input_grad else None
        g2 = grad.reshape(-1, grad.shape[-1])
        grad_w = torch.matmul(g2.mT, x.reshape(-1, x.shape[-1])) if ctx.needs_input_grad[1] else None
        grad_b = g2.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b


def _may_need_grad(t: Tensor) -> bool:
    """False only for a plain tensor (under any vmap levels) that does not require grad: model input data."""
    while _functorch.is_batchedtensor(t):
        t = _functorch.get_unwrapped(t)
    return _functorch.is_functorch_wrapped_tensor(t) or t.requires_grad


class _FastLinearMode(TorchFunctionMode):
    """Sends ``F.linear`` to ``FastLinear``; every other call passes through unchanged."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            x, weight = args[0], args[1]
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            return FastLinear.apply(x, weight, bias)
        return func(*args, **kwargs)


def fast_linear() -> TorchFunctionMode:
    """Context manager: inside it, ``F.linear`` runs as ``FastLinear`` (same values, contiguous weight grads)."""
    return _FastLinearMode()
