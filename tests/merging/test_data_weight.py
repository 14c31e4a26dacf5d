"""Our delta-W terms: the update B A, fold variance, client spread over K_eff, the input-hash folds."""

import torch

from bouquet.merging.data_weight import delta_distance, delta_spread, delta_w, fold_mask, fold_trace


def _lora(seed: int, out: int = 5, r: int = 2, d_in: int = 4) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"m.fc.lora_A": torch.randn(1, r, d_in, generator=g), "m.fc.lora_B": torch.randn(1, out, r, generator=g),
            "m.conv.lora_A": torch.randn(1, r, 3, 3, 1, generator=g),
            "m.conv.lora_B": torch.randn(1, 2, r, 1, 3, generator=g)}


def test_delta_w_is_the_product_and_has_the_conv_kernels_entries():
    p = _lora(0)
    dw = delta_w(p)
    assert torch.allclose(dw["m.fc"], (p["m.fc.lora_B"][0] @ p["m.fc.lora_A"][0]).flatten())
    kernel = torch.einsum("orhw,rixy->oihxwy", p["m.conv.lora_B"][0], p["m.conv.lora_A"][0])
    assert torch.allclose(dw["m.conv"].sort().values, kernel.flatten().sort().values, atol=1e-6)
    # stacked over clients (lead = 1) gives the same per client
    stacked = {k: torch.stack([v, _lora(1)[k]]) for k, v in p.items()}
    assert torch.allclose(delta_w(stacked, lead=1)["m.fc"][0], dw["m.fc"])


def test_fold_trace_and_distance():
    a, b = _lora(0), _lora(1)
    da, db = delta_w(a), delta_w(b)
    d2 = sum(((da[k] - db[k]) ** 2).sum() for k in da)
    assert torch.allclose(fold_trace([a, b]), d2 / 4)
    assert torch.allclose(delta_distance(a, b), d2)
    per_layer = fold_trace([a, b], ["m.conv", "m.fc"])
    assert per_layer.shape == (2,) and torch.allclose(per_layer.sum(), d2 / 4)


def test_fold_trace_estimates_the_full_data_variance():
    # K fits on n/K rows each have K times the variance of one fit on n rows (sigma^2 per entry)
    g = torch.Generator().manual_seed(0)
    sigma2, k, est = 0.01, 4, []
    for _ in range(400):
        noise = (k * sigma2) ** 0.5
        folds = [{"m.fc.lora_A": torch.eye(3)[None], "m.fc.lora_B": 1 + noise * torch.randn(1, 3, 3, generator=g)}
                 for _ in range(k)]
        est.append(float(fold_trace(folds)))
    assert abs(sum(est) / len(est) - 9 * sigma2) < 0.1 * 9 * sigma2


def test_delta_spread_is_the_variance_of_the_mean_in_delta_space():
    ups = [_lora(s) for s in range(4)]
    stacked = {k: torch.stack([u[k] for u in ups]) for k in ups[0]}
    got = delta_spread(stacked, torch.ones(4))
    dws = torch.stack([torch.cat([delta_w(u)["m.conv"], delta_w(u)["m.fc"]]) for u in ups])
    assert torch.allclose(got, ((dws - dws.mean(0)) ** 2).mean(0).sum() / 4, rtol=1e-5)


def test_fold_mask_partitions_and_follows_the_example_not_its_position():
    x = torch.rand(50, 8)
    masks = torch.stack([fold_mask(x, 3, k) for k in range(3)])
    assert torch.equal(masks.sum(0), torch.ones(50)) and bool((masks.sum(1) > 5).all())
    perm = torch.randperm(50)
    assert torch.equal(fold_mask(x[perm], 3, 1), fold_mask(x, 3, 1)[perm])
