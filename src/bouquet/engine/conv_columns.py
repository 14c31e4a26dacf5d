"""A conv with each client's own kernel as im2col and one matmul per client: the conv kernels' first conv.

oneDNN's 1-channel 5x5 kernels and their weight gradient are slow on the data's conv (benchmarks/RESULTS.md),
so its patches are copied once and multiplied by every client's kernel in one batched matmul. The columns are
laid out [K, Q, B, Ho*Wo] (Q = kh*kw*C rows, plus a row of ones for the bias): read transposed, each client's
block is one [B*Ho*Wo, Q] matrix, so forward and weight gradient are K large matmuls instead of K*B small ones,
and the copy runs along Wo, at unit stride on the data.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def out_size(size: int, kernel: int, stride: int, dilation: int) -> int:
    """A conv's output length along one axis of a (padded) input of ``size``."""
    return (size - dilation * (kernel - 1) - 1) // stride + 1


class _Columns(torch.autograd.Function):
    """im2col of x [K, B, H, W, C] (padded already) as columns [K, kh*kw*C (+1), B, Ho*Wo], rows ordered (kh, kw, C).

    ``ones`` appends a row of ones, so the bias rides in the matmul (its gradient too). Backward (only when x
    needs a gradient: a later conv run this way) adds the kh*kw shifted slices back.
    """

    @staticmethod
    def forward(ctx, x: Tensor, kernel: tuple[int, int], stride: tuple[int, int],  # type: ignore[override]
                dilation: tuple[int, int], ones: bool) -> Tensor:
        k, b, height, width, c = x.shape
        (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
        ho, wo = out_size(height, kh, sh, dh), out_size(width, kw, sw, dw)
        st = x.stride()
        rows = kh * kw * c
        out = x.new_empty(k, rows + int(ones), b, ho * wo)
        view = x.as_strided((k, kh, kw, c, b, ho, wo),
                            (st[0], st[2] * dh, st[3] * dw, st[4], st[1], st[2] * sh, st[3] * sw))
        out[:, :rows].view(k, kh, kw, c, b, ho, wo).copy_(view)
        if ones:
            out[:, rows].fill_(1.0)
        ctx.geometry = (x.shape, kernel, stride, dilation, ho, wo)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        shape, (kh, kw), (sh, sw), (dh, dw), ho, wo = ctx.geometry
        k, b, c = shape[0], shape[1], shape[4]
        patches = grad[:, :kh * kw * c].reshape(k, kh, kw, c, b, ho, wo).permute(0, 4, 1, 2, 5, 6, 3)
        out = grad.new_zeros(shape)  # [K, B, H, W, C]; patches [K, B, kh, kw, Ho, Wo, C]
        for i in range(kh):
            rows = slice(i * dh, i * dh + sh * (ho - 1) + 1, sh)
            for j in range(kw):
                out[:, :, rows, j * dw:j * dw + sw * (wo - 1) + 1:sw] += patches[:, :, i, j]
        return out, None, None, None, None


def im2col_conv(x: Tensor, weight: Tensor, bias: Tensor | None, stride: tuple[int, int], padding: tuple[int, int],
                dilation: tuple[int, int]) -> Tensor:
    """Conv of x [K, B, C, H, W] with kernels [K, out, C, kh, kw] and biases [K, out]: [K*B, out, Ho, Wo],
    channels-last in memory."""
    k, b = x.shape[:2]
    ph, pw = padding
    xn = x.permute(0, 1, 3, 4, 2)  # [K, B, H, W, C] (a view for channels-last activations)
    if ph or pw:
        xn = F.pad(xn, (0, 0, pw, pw, ph, ph))
    out_c, c, kh, kw = weight.shape[1:]
    cols = _Columns.apply(xn, (kh, kw), stride, dilation, bias is not None)  # [K, Q, B, Ho*Wo]
    ho = out_size(xn.shape[2], kh, stride[0], dilation[0])
    wo = cols.shape[3] // ho
    wmat = weight.permute(0, 3, 4, 2, 1).reshape(k, kh * kw * c, out_c)
    if bias is not None:
        wmat = torch.cat([wmat, bias[:, None, :]], dim=1)
    out = torch.bmm(cols.view(k, cols.shape[1], b * ho * wo).transpose(1, 2), wmat)  # [K, B*Ho*Wo, out]
    return out.view(k * b, ho, wo, out_c).permute(0, 3, 1, 2)
