"""Preconditioning against a hand computation."""

import pytest
import torch

from bouquet.adapters import precondition_lora_grads


@pytest.mark.parametrize("rank", [3, 1])  # rank 1 takes the division fast path
def test_linear_preconditioning_by_hand(rank):
    torch.manual_seed(0)
    A, B = torch.randn(2, rank, 5), torch.randn(2, 4, rank)
    gA, gB, gb = torch.randn(2, rank, 5), torch.randn(2, 4, rank), torch.randn(2, 4)
    params = {"model.fc.lora_A": A, "model.fc.lora_B": B, "model.fc.lora_bias": torch.zeros(2, 4),
              "router.logits": torch.zeros(2), "model.fc.base.weight": torch.zeros(4, 5)}
    grads = {"model.fc.lora_A": gA, "model.fc.lora_B": gB, "model.fc.lora_bias": gb,
             "router.logits": torch.ones(2), "model.fc.base.weight": torch.ones(4, 5)}
    eps = 1e-5
    out = precondition_lora_grads(params, grads, eps=eps)
    eye = torch.eye(rank, dtype=torch.float64)
    for c in range(2):
        a, b = A[c].double(), B[c].double()
        want_a = torch.inverse(b.T @ b + eps * eye) @ gA[c].double()
        want_b = gB[c].double() @ torch.inverse(a @ a.T + eps * eye)
        torch.testing.assert_close(out["model.fc.lora_A"][c].double(), want_a, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(out["model.fc.lora_B"][c].double(), want_b, atol=1e-4, rtol=1e-4)
    for untouched in ("model.fc.lora_bias", "router.logits", "model.fc.base.weight"):
        assert out[untouched] is grads[untouched]


def test_conv_preconditioning_by_hand():
    torch.manual_seed(0)
    A, B = torch.randn(2, 3, 4, 1, 3), torch.randn(2, 5, 3, 3, 1)
    gA, gB = torch.randn_like(A), torch.randn_like(B)
    out = precondition_lora_grads({"l.lora_A": A, "l.lora_B": B}, {"l.lora_A": gA, "l.lora_B": gB})
    for c in range(2):
        gram_b = sum(B[c, o, :, None] * B[c, o, None, :] for o in range(5))  # [r, r, kh, kw]
        gram_a = sum(A[c, :, i, None] * A[c, :, i][None] for i in range(4))
        torch.testing.assert_close(out["l.lora_A"][c], gA[c] / (gram_b.norm() + 1e-5))
        torch.testing.assert_close(out["l.lora_B"][c], gB[c] / (gram_a.norm() + 1e-5))
