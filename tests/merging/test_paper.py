"""The paper's form: (b - c)/(a + b - 2c) minimises the joint bound, clipped gradient correlation, factor merge."""

import torch

from bouquet.merging.paper import gradient_correlation, merge_factors, paper_weight


def test_paper_weight_minimises_the_joint_quadratic_and_handles_degenerate_cases():
    a, b, c = torch.tensor(2.0), torch.tensor(3.0), torch.tensor(0.5)
    grid = torch.linspace(0, 1, 10001)
    bound = grid**2 * a + (1 - grid) ** 2 * b + 2 * grid * (1 - grid) * c
    assert abs(float(paper_weight(a, b, c)) - float(grid[bound.argmin()])) < 1e-3
    assert float(paper_weight(torch.tensor(1.0), torch.tensor(1.0), torch.tensor(1.0))) == 0.5  # a = b = c
    assert float(paper_weight(torch.tensor(1.0), torch.tensor(0.2), torch.tensor(0.5))) == 0.0  # b < c: clipped
    batched = paper_weight(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0]), torch.zeros(2))
    assert batched.tolist() == [0.5, 1.0]


def test_gradient_correlation_is_clipped_to_unit_interval():
    g = torch.Generator().manual_seed(0)
    u = {"l.lora_A": torch.randn(6, 2, 3, generator=g), "l.lora_B": torch.randn(6, 4, 2, generator=g)}
    w = torch.ones(6)
    assert abs(float(gradient_correlation(u, u, w)) - 1.0) < 1e-6
    assert float(gradient_correlation(u, {k: -v for k, v in u.items()}, w)) == 0.0
    assert gradient_correlation(u, u, w, ["l"]).shape == (1,)


def test_factor_merge_mixes_a_and_b_separately():
    f = {"l.lora_A": torch.ones(1, 2, 3), "l.lora_B": torch.ones(1, 4, 2)}
    g = {"l.lora_A": torch.zeros(1, 2, 3), "l.lora_B": 3 * torch.ones(1, 4, 2)}
    m = merge_factors(f, g, torch.tensor(0.25))
    assert torch.allclose(m["l.lora_A"], torch.full((1, 2, 3), 0.25))
    assert torch.allclose(m["l.lora_B"], torch.full((1, 4, 2), 2.5))
