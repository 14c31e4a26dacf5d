"""Upload screening: the fast non-finite check is exact, overflowing finite rows included."""

import torch

from bouquet.engine.validation import nonfinite_rows, validate_uploads


def test_nonfinite_rows_is_exact():
    big = torch.finfo(torch.float32).max
    rows = torch.zeros(6, 4)
    rows[1, 2] = float("nan")
    rows[2, 0] = float("inf")
    rows[3, 1] = -float("inf")
    rows[4, :2] = torch.tensor([float("inf"), -float("inf")])  # sum is NaN
    rows[5] = big  # finite values whose sum overflows to inf: clean
    assert not torch.isfinite(rows[5].sum())
    assert nonfinite_rows(rows).tolist() == [False, True, True, True, True, False]
    assert torch.equal(nonfinite_rows(rows), ~torch.isfinite(rows).all(dim=1))


def test_validate_uploads_names_the_tensor_and_client():
    uploads = {"w": torch.ones(3, 2, 2)}
    uploads["w"][1, 0, 1] = float("nan")
    ok, report = validate_uploads(uploads, torch.zeros(3), ids=torch.tensor([7, 8, 9]))
    assert ok.tolist() == [True, False, True]
    assert report["rejected"] == [8] and "w: NaN or Inf" in report["rejected_reasons"]["8"]
