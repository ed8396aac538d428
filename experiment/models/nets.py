"""Plain `nn.Module` classifiers. Each takes the data's input shape and class count.

The config supplies architecture knobs (`model.*`); the run passes `input_shape` and
`num_classes` from the loaded data, so no model hard-codes an image size.
"""

from __future__ import annotations

import torch
from torch import nn

from experiment.errors import ConfigValueError


def image_shape(input_shape, model: str) -> tuple[int, int, int]:
    """(channels, height, width) of images; inputs of another shape (feature rows, say)
    are refused naming the model and what fits them."""
    if len(input_shape) != 3:
        raise ConfigValueError(
            "model",
            model,
            f"a model for inputs of shape {tuple(input_shape)}: model=mlp, or a model of "
            f"your own. {model} takes images (channels x height x width)",
        )
    return tuple(input_shape)


def init_weights(module: nn.Module, scheme: str = "default", std: float = 0.02) -> None:
    """Re-initialise conv and linear layers; 'default' keeps PyTorch's own init."""
    if scheme == "default":
        return
    for layer in module.modules():
        if not isinstance(layer, nn.Conv2d | nn.Linear):
            continue
        if scheme == "kaiming":
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
        elif scheme == "xavier":
            nn.init.xavier_uniform_(layer.weight)
        elif scheme == "normal":
            nn.init.normal_(layer.weight, std=std)
        else:
            raise ValueError(f"unknown init scheme {scheme!r}")
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)


class MLP(nn.Module):
    def __init__(
        self,
        input_shape,
        num_classes: int,
        hidden_sizes=(512, 256),
        dropout: float = 0.0,
        batch_norm: bool = False,
        init: str = "default",
        init_std: float = 0.02,
    ):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = int(torch.tensor(input_shape).prod())
        for hidden in hidden_sizes:
            layers += [nn.Linear(width, hidden)]
            layers += [nn.BatchNorm1d(hidden)] if batch_norm else []
            layers += [nn.ReLU(inplace=True), nn.Dropout(dropout)]
            width = hidden
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)
        init_weights(self, init, init_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CNN(nn.Module):
    """conv-[bn]-relu-pool per entry of `channels`, then dropout-fc-relu-dropout-fc.

    With channels=[32, 64] this is the classic MNIST example net. Pooling stops once the
    feature map is 1 pixel wide, so small inputs (8x8 digits) take any depth.
    """

    def __init__(
        self,
        input_shape,
        num_classes: int,
        channels=(32, 64),
        kernel_size: int = 3,
        hidden_size: int = 128,
        dropout: float = 0.0,
        batch_norm: bool = False,
        init: str = "default",
        init_std: float = 0.02,
    ):
        super().__init__()
        in_channels, height, width = image_shape(input_shape, "cnn")
        layers: list[nn.Module] = []
        for out_channels in channels:
            layers.append(
                nn.Conv2d(
                    in_channels,
                    out_channels,
                    kernel_size,
                    padding=kernel_size // 2,
                    bias=not batch_norm,
                )
            )
            layers += [nn.BatchNorm2d(out_channels)] if batch_norm else []
            layers.append(nn.ReLU(inplace=True))
            if min(height, width) >= 2:
                layers.append(nn.MaxPool2d(2))
                height, width = height // 2, width // 2
            in_channels = out_channels
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Dropout(dropout),
            nn.Flatten(),
            nn.Linear(in_channels * height * width, hidden_size),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden_size, num_classes),
        )
        init_weights(self, init, init_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class ResNet18(nn.Module):
    """torchvision's ResNet-18 (untrained), with a small-image stem below 64 px."""

    def __init__(
        self,
        input_shape,
        num_classes: int,
        dropout: float = 0.0,
        init: str = "default",
        init_std: float = 0.02,
    ):
        super().__init__()
        from torchvision.models import resnet18

        in_channels, height, width = image_shape(input_shape, "resnet18")
        net = resnet18(weights=None, num_classes=num_classes)
        if min(height, width) < 64:
            # The ImageNet stem downsamples 4x before the first block, which leaves a
            # 32 px image with 8 px; the CIFAR variant keeps full resolution.
            net.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        elif in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        net.fc = nn.Sequential(nn.Dropout(dropout), net.fc)
        self.net = net
        init_weights(self, init, init_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
