"""Small vision and regression networks used by FLoRAL's tasks, shaped from the dataset's input shape."""

from __future__ import annotations

import math

import torch
from torch import nn


def _flat_dim(input_shape: tuple[int, ...]) -> int:
    return math.prod(input_shape)


def linear(input_shape: tuple[int, ...], num_outputs: int) -> nn.Module:
    """A single affine map (FLoRAL's synthetic_linear model: Linear(10, 3))."""
    return nn.Sequential(nn.Flatten(), nn.Linear(_flat_dim(input_shape), num_outputs))


def mlp(input_shape: tuple[int, ...], num_outputs: int, hidden: int = 200) -> nn.Module:
    """One hidden ReLU layer: 784-200-10 on MNIST, 10-20-1 on synthetic_mlp (hidden=20)."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(_flat_dim(input_shape), hidden),
        nn.ReLU(),
        nn.Linear(hidden, num_outputs),
    )


def _conv_out_features(features: nn.Module, input_shape: tuple[int, ...]) -> int:
    with torch.no_grad():
        return int(features(torch.zeros(1, *input_shape)).numel())


def cifar_cnn(input_shape: tuple[int, ...], num_outputs: int) -> nn.Module:
    """FLoRAL's CIFAR CNN: conv5x5(32)-pool2-conv3x3(64)-pool3-fc(->64)-fc; fc1024 on 3x32x32 input."""
    if len(input_shape) != 3:
        raise ValueError(f"model 'cifar_cnn' needs image input [C, H, W], got input shape {input_shape}")
    if min(input_shape[1:]) < 14:  # conv5 -> pool2 -> conv3 -> pool3 leaves nothing below 14 pixels
        raise ValueError(f"model 'cifar_cnn' needs images of at least 14x14 pixels (conv5x5, pool2, conv3x3, "
                         f"pool3), got input shape {input_shape}")
    features = nn.Sequential(
        nn.Conv2d(input_shape[0], 32, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(3),
        nn.Flatten(),
    )
    flat = _conv_out_features(features, input_shape)
    return nn.Sequential(*features, nn.Linear(flat, 64), nn.ReLU(), nn.Linear(64, num_outputs))


def vgg8(input_shape: tuple[int, ...], num_outputs: int, dropout: float = 0.5) -> nn.Module:
    """VGG8 without BatchNorm (convs 16-32-64-128-512, FC 512-512-out, dropout), FLoRAL's CIFAR-100 net."""
    if len(input_shape) != 3:
        raise ValueError(f"model 'vgg8' needs image input [C, H, W], got input shape {input_shape}")
    layers: list[nn.Module] = []
    channels = input_shape[0]
    size = min(input_shape[1:])
    for width in (16, 32, 64, 128, 512):
        layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU()]
        if size >= 2:  # pool while the feature map allows it (32x32 -> 1x1 after five pools)
            layers.append(nn.MaxPool2d(2))
            size //= 2
        channels = width
    layers.append(nn.Flatten())
    features = nn.Sequential(*layers)
    flat = _conv_out_features(features, input_shape)
    return nn.Sequential(
        *features,
        nn.Dropout(dropout), nn.Linear(flat, 512), nn.ReLU(),
        nn.Dropout(dropout), nn.Linear(512, 512), nn.ReLU(),
        nn.Linear(512, num_outputs),
    )
