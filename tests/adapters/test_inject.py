"""Injection by name/type/regex, errors, no mutation of the user's model, param roles, a toy fit."""

import pytest
import torch
from torch import nn

from bouquet.adapters import (
    MixtureConv2d,
    MixtureLinear,
    MixtureModel,
    MixtureNorm,
    Router,
    adaptor_parameter_count,
    freeze_base,
    inject,
    param_role,
    split_params,
)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.encoder = nn.ModuleDict({"fc1": nn.Linear(64, 16), "fc2": nn.Linear(16, 16)})
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        h = self.features(x).flatten(1)
        return self.head(torch.relu(self.encoder["fc2"](torch.relu(self.encoder["fc1"](h)))))


def wrapped(model):
    return {n for n, m in model.model.named_modules() if isinstance(m, MixtureLinear | MixtureConv2d | MixtureNorm)}


def test_default_targets_every_linear_and_conv_including_head():
    model = inject(Net(), num_adaptors=2, rank=1)
    assert wrapped(model) == {"features.0", "encoder.fc1", "encoder.fc2", "head"}
    assert isinstance(model, MixtureModel)


def test_by_name_suffix_glob_regex_and_exclude():
    assert wrapped(inject(Net(), num_adaptors=2, rank=1, target_modules=["head"])) == {"head"}
    assert wrapped(inject(Net(), num_adaptors=2, rank=1, target_modules="fc1")) == {"encoder.fc1"}
    assert wrapped(inject(Net(), num_adaptors=2, rank=1, target_modules=["encoder.*"])) == {
        "encoder.fc1", "encoder.fc2"}
    assert wrapped(inject(Net(), num_adaptors=2, rank=1, target_modules=[r"encoder\.fc\d"])) == {
        "encoder.fc1", "encoder.fc2"}
    assert wrapped(inject(Net(), num_adaptors=2, rank=1, exclude=["head", "features.*"])) == {
        "encoder.fc1", "encoder.fc2"}


def test_by_type_and_norm_adaptors():
    assert wrapped(inject(Net(), num_adaptors=2, rank=1, target_types=(nn.Conv2d,))) == {"features.0"}
    model = inject(Net(), num_adaptors=2, rank=1, norm_adaptors=True)
    assert "features.1" in wrapped(model)
    assert model.model.features[1].lora_weight.shape == (2, 4)


def test_no_match_raises_with_available_names():
    with pytest.raises(ValueError, match=r"nope.*modules of those types.*encoder\.fc1"):
        inject(Net(), num_adaptors=2, rank=1, target_modules=["nope"])


def test_user_model_not_mutated_and_output_equal_at_init():
    torch.manual_seed(0)
    net = Net().eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    model = inject(net, num_adaptors=3, rank=2, adaptor_bias=True).eval()
    assert all(isinstance(m, nn.Linear | nn.Conv2d | nn.BatchNorm2d | nn.ReLU | nn.Sequential | nn.ModuleDict
                          | Net) for m in net.modules())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    x = torch.randn(2, 1, 4, 4)
    torch.testing.assert_close(model(x), net(x))


def test_param_names_and_roles():
    model = inject(nn.Sequential(nn.Linear(4, 3)), num_adaptors=2, rank=1, adaptor_bias=True)
    names = dict(model.named_parameters())
    assert set(names) == {"model.0.base.weight", "model.0.base.bias", "model.0.lora_A", "model.0.lora_B",
                          "model.0.lora_bias", "router.logits"}
    roles = {n: param_role(n) for n in names}
    assert roles["router.logits"] == "router" and roles["model.0.base.weight"] == "base"
    assert roles["model.0.lora_A"] == "adaptor"
    parts = split_params(names)
    assert set(parts["adaptor"]) == {"model.0.lora_A", "model.0.lora_B", "model.0.lora_bias"}
    freeze_base(model)
    assert [n for n, p in model.named_parameters() if not p.requires_grad] == ["model.0.base.weight",
                                                                                 "model.0.base.bias"]
    assert adaptor_parameter_count(model) == 2 * (4 + 3 + 3)


def test_router_mismatch_and_external_router():
    with pytest.raises(ValueError, match="router"):
        inject(Net(), num_adaptors=2, rank=1, router=Router(3))
    router = Router(2)
    assert inject(Net(), num_adaptors=2, rank=1, router=router).router is router


def test_wrapped_sequential_trains_on_toy_task():
    torch.manual_seed(0)
    x = torch.randn(64, 5)
    y = (x[:, :1] * 2 - x[:, 1:2]).sin()
    net = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 1))
    model = freeze_base(inject(net, num_adaptors=2, rank=2))
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    losses = []
    for _ in range(30):
        loss = nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
    assert model.router.logits.grad is not None


def test_bare_linear_model_is_wrapped_at_the_root():
    # synthetic_linear's model is a bare nn.Linear(10, 3).
    model = inject(nn.Linear(10, 3), num_adaptors=2, rank=0.01)
    assert isinstance(model.model, MixtureLinear) and model.model.rank == 1
    assert {n for n, _ in model.named_parameters()} == {"model.base.weight", "model.base.bias", "model.lora_A",
                                                         "model.lora_B", "router.logits"}
    assert model(torch.randn(4, 10)).shape == (4, 3)
