"""The device-side data path: every sample once per epoch, labels stay aligned, and
precision auto on CPU is exactly fp32."""

from __future__ import annotations

import pytest
import torch

from experiment.data.loaders import (
    Augmentation,
    BatchTransform,
    DeviceLoader,
    random_crop,
    random_hflip,
    random_resized_crop,
)
from experiment.models.nets import CNN
from experiment.runtime.device import autocast_dtype
from experiment.training.engine import FitSettings, evaluate, train_one_epoch

CPU = torch.device("cpu")


def identity_transform():
    return BatchTransform([0.0], [1.0 / 255.0], CPU)  # float of the raw uint8 values


def test_device_loader_yields_every_sample_once_per_epoch():
    n = 103  # not a multiple of the batch size
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1)
    labels = torch.arange(n)
    loader = DeviceLoader(
        images,
        labels,
        10,
        identity_transform(),
        shuffle=True,
        generator=torch.Generator().manual_seed(0),
    )
    epochs = [torch.cat([y for _, y in loader]) for _ in range(2)]
    for seen in epochs:
        assert sorted(seen.tolist()) == list(range(n))
    assert not torch.equal(epochs[0], epochs[1])  # reshuffled each epoch
    assert len(loader) == 11


def test_batches_keep_images_and_labels_aligned():
    n = 50
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 4, 4).contiguous()
    loader = DeviceLoader(images, torch.arange(n), 8, identity_transform(), shuffle=True)
    for x, y in loader:
        assert torch.equal(x[:, 0, 0, 0].long(), y)


def test_normalization_matches_the_formula():
    images = torch.randint(0, 256, (5, 3, 4, 4), dtype=torch.uint8)
    mean, std = [0.1, 0.2, 0.3], [0.5, 0.25, 0.2]
    out = BatchTransform(mean, std, CPU)(images)
    expected = (images.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(
        std
    ).view(1, 3, 1, 1)
    torch.testing.assert_close(out, expected)


def test_random_crop_shifts_each_sample_within_the_padding():
    # Each sample is a ramp; a crop is the same ramp shifted by at most `padding` pixels.
    n, size, pad = 64, 8, 2
    ramp = (
        torch.arange(1, size + 1, dtype=torch.float32).view(1, 1, 1, size).expand(n, 1, size, size)
    )
    out = random_crop(ramp.clone(), pad, torch.Generator().manual_seed(0))
    assert out.shape == ramp.shape
    shifts = set()
    for sample in out:
        row = sample[0, size // 2]
        inside = row[row > 0]
        shift = int(inside[0].item()) - 1 - int((row > 0).nonzero()[0].item())
        assert abs(shift) <= pad
        shifts.add(shift)
    assert len(shifts) > 1  # per-sample offsets, not one for the batch


def test_hflip_flips_some_samples_and_keeps_the_others():
    x = torch.randn(200, 1, 3, 5)
    out = random_hflip(x, torch.Generator().manual_seed(0))
    flipped = torch.tensor([torch.equal(o, s.flip(2)) for o, s in zip(out, x, strict=True)])
    kept = torch.tensor([torch.equal(o, s) for o, s in zip(out, x, strict=True)])
    assert (flipped | kept).all() and 50 < flipped.sum() < 150


def test_augmented_loader_keeps_label_alignment():
    # Label k's images are constant k: any crop/flip of them is still constant k
    # (padding is the normalized zero), so a misaligned label would show.
    n = 40
    images = (
        torch.arange(1, n + 1, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 6, 6).contiguous()
    )
    transform = BatchTransform(
        [0.0], [1.0 / 255.0], CPU, augment=Augmentation(crop_padding=2, hflip=True)
    )
    for x, y in DeviceLoader(images, torch.arange(1, n + 1), 7, transform, shuffle=True):
        assert x.shape[1:] == (1, 6, 6)
        assert torch.equal(x.amax(dim=(1, 2, 3)).long(), y)


def test_precision_auto_on_cpu_equals_fp32():
    assert autocast_dtype("auto", CPU) is None

    def train(precision):
        torch.manual_seed(0)
        model = CNN((1, 8, 8), 10, channels=[4, 8], hidden_size=16)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        gen = torch.Generator().manual_seed(1)
        images = torch.randint(0, 256, (64, 1, 8, 8), dtype=torch.uint8, generator=gen)
        loader = DeviceLoader(
            images,
            torch.randint(0, 10, (64,), generator=gen),
            16,
            BatchTransform([0.5], [0.25], CPU),
            shuffle=False,
        )
        dtype = autocast_dtype(precision, CPU)
        train_one_epoch(model, loader, opt, FitSettings(epochs=1, device=CPU, amp_dtype=dtype))
        return evaluate(model, loader, device=CPU, amp_dtype=dtype), model.state_dict()

    (auto_metrics, auto_state), (fp32_metrics, fp32_state) = train("auto"), train("fp32")
    assert auto_metrics == fp32_metrics
    for key in fp32_state:
        assert torch.equal(auto_state[key], fp32_state[key]), key


@pytest.mark.gpu
def test_cuda_path_runs_in_bf16_with_data_on_the_device():
    device = torch.device("cuda")
    images = torch.randint(0, 256, (256, 1, 8, 8), dtype=torch.uint8, device=device)
    loader = DeviceLoader(
        images,
        torch.randint(0, 10, (256,), device=device),
        64,
        BatchTransform([0.5], [0.25], device, channels_last=True),
        shuffle=True,
    )
    model = CNN((1, 8, 8), 10).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters())
    settings = FitSettings(epochs=1, device=device, amp_dtype=autocast_dtype("auto", device))
    metrics = train_one_epoch(model, loader, opt, settings)
    assert autocast_dtype("auto", device) == torch.bfloat16 and metrics["samples"] == 256


def test_random_resized_crops_zoom_into_each_sample_differently():
    torch.manual_seed(0)
    # A horizontal ramp per sample: a crop is a stretched part of the same ramp.
    ramp = torch.linspace(0, 1, 32).expand(8, 3, 32, 32).contiguous()
    out = random_resized_crop(ramp, (0.2, 0.5), torch.Generator().manual_seed(1))
    assert out.shape == ramp.shape
    assert out.min() >= 0 and out.max() <= 1  # pixels of the image only, no padding
    spans = out[:, 0, 16, -1] - out[:, 0, 16, 0]  # the ramp's span seen across a crop
    assert (spans < 0.8).all() and (spans > 0).all()  # zoomed in, same orientation
    assert len({round(v, 4) for v in spans.tolist()}) > 1  # each sample its own crop


class FlattensByView(torch.nn.Module):
    """A user's conv net that flattens its feature maps with .view(): it needs the
    default memory layout."""

    def __init__(self, num_classes: int = 10, **_):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.head = torch.nn.Linear(4 * 8 * 8, num_classes)

    def forward(self, x):
        features = self.conv(x)
        return self.head(features.view(features.size(0), -1))


@pytest.mark.parametrize(
    ("model", "channels_last"),
    [(["model=cnn"], True), ([f"model._target_={__name__}.FlattensByView"], False)],
)
def test_conv_nets_train_channels_last_on_the_cpu_unless_they_cannot(model, channels_last):
    from experiment.training.builders import build_parts
    from tests.conftest import run_config

    parts = build_parts(run_config([*model, "tracking=none"]), torch.device("cpu"))
    conv = next(m for m in parts.model.modules() if isinstance(m, torch.nn.Conv2d))
    inputs, _ = next(iter(parts.data.train))
    with torch.no_grad():  # the layout its feature maps come in (4 channels: unambiguous)
        features = conv(inputs)
    assert features.is_contiguous(memory_format=torch.channels_last) == channels_last
    settings = FitSettings(epochs=1, device=torch.device("cpu"))
    assert train_one_epoch(parts.model, parts.data.train, parts.optimizer, settings)["samples"]
