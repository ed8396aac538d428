"""Transfer learning: timm models with weights from a local file, fine-tuning controls,
data matched to the model, and image folders of real JPEG photos decoded once."""

from __future__ import annotations

import logging
import multiprocessing as mp
from pathlib import Path

import mlflow
import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from sklearn.datasets import load_sample_images

from experiment.config.run_config import RunConfig
from experiment.data.datasets import FolderSplits, ImageTensors, image_folder
from experiment.data.loaders import BatchTransform
from experiment.errors import ConfigError
from experiment.models import pretrained
from experiment.train import run
from experiment.training.builders import build_model, build_optimizer, build_parts
from experiment.training.checkpoint import BEST, load_checkpoint
from experiment.training.engine import FitSettings, fit
from tests.conftest import all_runs, run_config, sqlite_uri, store_overrides

CPU = torch.device("cpu")


def photo_folder(root: Path, per_class: int = 6, size: int = 96, splits=("train",)) -> Path:
    """Real photos as a two-class JPEG folder: crops of scikit-learn's two sample photos
    (a temple in China, a flower), each class from its own photo."""
    photos = load_sample_images().images  # 427 x 640 x 3 uint8
    rng = np.random.default_rng(0)
    for split in splits:
        for name, photo in zip(("china", "flower"), photos, strict=True):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(per_class):
                top, left = rng.integers(0, 427 - size), rng.integers(0, 640 - size)
                crop = photo[top : top + size, left : left + size]
                Image.fromarray(crop).save(folder / f"{index}.jpg", quality=90)
    return root


def saved_test_resnet(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    """timm's tiny test architecture with trained-looking weights, saved as a file."""
    torch.manual_seed(1)
    source = timm.create_model("test_resnet", num_classes=5)
    path = tmp_path / "test_resnet.safetensors"
    save_file(source.state_dict(), str(path))
    return path, source


def timm_overrides(weights: Path, *extra: str) -> list[str]:
    return ["model=timm", "model.name=test_resnet", f"model.weights={weights}", *extra]


def test_weights_from_a_file_arrive_and_the_head_has_the_data_classes(tmp_path):
    weights, source = saved_test_resnet(tmp_path)
    cfg = run_config(timm_overrides(weights))
    model = build_model(cfg.model, (3, 32, 32), num_classes=2)
    for name, tensor in source.state_dict().items():
        if not name.startswith("fc."):  # the head is new: 2 classes, not 5
            assert torch.equal(model.state_dict()[name], tensor), name
    assert model.get_classifier().out_features == 2
    fresh = build_model(run_config(["model=timm", "model.name=test_resnet"]).model, (3, 32, 32), 2)
    assert not torch.equal(fresh.conv1[0].weight, source.conv1[0].weight)  # random without weights


def test_pretrained_weights_come_from_the_local_hugging_face_cache(tmp_path, monkeypatch):
    """A Hugging Face cache as `hf download timm/test_resnet.r160_in1k` leaves it."""
    from huggingface_hub import constants

    weights, source = saved_test_resnet(tmp_path)
    repo = tmp_path / "hub" / "models--timm--test_resnet.r160_in1k"
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    (snapshot / "model.safetensors").write_bytes(weights.read_bytes())
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    cfg = run_config(["model=timm", "model.name=test_resnet", "model.pretrained=true"])
    model = build_model(cfg.model, (3, 32, 32), 2)
    assert torch.equal(model.conv1[0].weight, source.conv1[0].weight)


def test_no_cached_weights_is_one_clear_error_and_no_download(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        ConfigError, match=r"No pretrained weights for timm model 'resnet18'.*model\.weights="
    ):
        pretrained.weights_file("resnet18", None)


def folder_overrides(tmp_path: Path, folder: Path, *extra: str) -> list[str]:
    """An image_folder run over `folder`, its cache under tmp_path."""
    return [
        "dataset=image_folder",
        f"dataset.source.path={folder}",
        f"dataset.cache_dir={tmp_path / 'cache'}",
        *extra,
    ]


def _one_epoch(parts, epochs: int = 1, callbacks=()):
    settings = FitSettings(epochs=epochs, device=CPU, seed=0)
    fit(parts.forward, parts.data, parts.optimizer, parts.scheduler, settings, callbacks)


def test_a_frozen_backbone_stays_until_it_is_unfrozen(tmp_path):
    weights, _ = saved_test_resnet(tmp_path)
    folder = photo_folder(tmp_path / "photos", size=48)
    cfg = run_config(
        folder_overrides(
            tmp_path,
            folder,
            "dataset.source.image_size=64",
            "dataset.batch_size=4",
            *timm_overrides(weights, "model.freeze_backbone=true"),
        )
    )
    parts = build_parts(cfg, CPU)
    model = parts.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert pretrained.trainable_parameters(model) == sum(p.numel() for p in model.fc.parameters())
    _one_epoch(parts)
    after = {k: v.clone() for k, v in model.state_dict().items()}
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"fc.weight", "fc.bias"}  # frozen: weights and BN statistics alike
    unfreeze = pretrained.UnfreezeBackbone(model, epoch=2)
    _one_epoch(parts, epochs=2, callbacks=[unfreeze])  # epoch 2 trains everything
    later = model.state_dict()
    assert not torch.equal(after["conv1.0.weight"], later["conv1.0.weight"])
    assert not torch.equal(after["bn1.running_mean"], later["bn1.running_mean"])


def test_the_backbone_gets_its_own_learning_rate(tmp_path):
    weights, _ = saved_test_resnet(tmp_path)
    cfg = run_config(
        timm_overrides(
            weights, "optimizer=sgd", "optimizer.lr=0.1", "optimizer.backbone_lr_scale=0.1"
        )
    )
    model = build_model(cfg.model, (3, 32, 32), 2)
    optimizer = build_optimizer(cfg.optimizer, model)
    rates = {len(g["params"]): g["lr"] for g in optimizer.param_groups}
    assert rates == {len(list(model.parameters())) - 2: pytest.approx(0.01), 2: 0.1}


def test_normalization_from_the_model_sets_size_mean_and_std(tmp_path):
    weights, _ = saved_test_resnet(tmp_path)
    folder = photo_folder(tmp_path / "photos", size=48)
    cfg = run_config(
        folder_overrides(tmp_path, folder, "dataset.normalization=model", *timm_overrides(weights))
    )
    assert cfg.dataset.mean == [0.5, 0.5, 0.5] and cfg.dataset.std == [0.5, 0.5, 0.5]
    parts = build_parts(cfg, CPU)
    assert parts.data.input_shape == (3, 160, 160)  # test_resnet's pretrained input size
    images, _ = next(iter(parts.data.val))
    assert images.shape[-2:] == (160, 160)
    assert images.min() >= -1.0 - 1e-6 and images.max() <= 1.0 + 1e-6  # (x - 0.5) / 0.5


# ---------------------------------------------------------------- the image cache


class _CountOpens:
    def __init__(self, monkeypatch):
        self.count, original = 0, Image.open

        def counting(*args, **kwargs):
            self.count += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(Image, "open", counting)


def test_images_are_decoded_once_then_served_from_the_cache(tmp_path, monkeypatch):
    folder = photo_folder(tmp_path / "photos")
    opens = _CountOpens(monkeypatch)
    first = image_folder(str(folder), image_size=32, cache_dir=str(tmp_path / "cache"))
    assert isinstance(first, ImageTensors) and opens.count == 12  # each image once
    again = image_folder(str(folder), image_size=32, cache_dir=str(tmp_path / "cache"))
    assert opens.count == 12  # the second load reads no image file
    assert torch.equal(first.train_images, again.train_images)
    assert len(first.train_labels) + len(first.test_labels) == 12

    (folder / "train" / "china" / "0.jpg").touch()  # a changed folder: a new cache
    image_folder(str(folder), image_size=32, cache_dir=str(tmp_path / "cache"))
    assert opens.count == 24
    assert len([p for p in (tmp_path / "cache").iterdir() if p.is_dir()]) == 2


def test_training_epochs_read_no_image_file(tmp_path, monkeypatch):
    folder = photo_folder(tmp_path / "photos")
    cfg = run_config(
        folder_overrides(tmp_path, folder, "dataset.source.image_size=16", "model=mlp")
    )
    parts = build_parts(cfg, CPU)  # builds the cache
    opens = _CountOpens(monkeypatch)
    _one_epoch(parts, epochs=2)
    assert opens.count == 0


def test_a_corrupt_image_is_left_out_and_named(tmp_path, caplog):
    folder = photo_folder(tmp_path / "photos")
    broken = folder / "train" / "flower" / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    with caplog.at_level(logging.WARNING):
        data = image_folder(str(folder), image_size=32, cache_dir=str(tmp_path / "cache"))
    assert len(data.train_labels) + len(data.test_labels) == 12
    assert "broken.jpg" in caplog.text and "Left out 1 image" in caplog.text


def test_a_cache_over_its_size_limit_falls_back_to_the_dataloader(tmp_path, caplog):
    folder = photo_folder(tmp_path / "photos")
    with caplog.at_level(logging.INFO):
        data = image_folder(
            str(folder), image_size=32, cache_dir=str(tmp_path / "cache"), cache_max_gb=1e-6
        )
    assert isinstance(data, FolderSplits)
    assert "dataset.cache_max_gb" in caplog.text
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def _build_cache(folder: str, cache: str, ready) -> None:
    ready.wait()
    data = image_folder(folder, image_size=24, cache_dir=cache)
    np.save(Path(cache).parent / f"seen-{mp.current_process().pid}.npy", data.train_images.numpy())


@pytest.mark.slow
def test_two_processes_building_one_cache_at_once_end_with_one_valid_cache(tmp_path):
    folder = photo_folder(tmp_path / "photos", per_class=20)
    context = mp.get_context("spawn")
    ready = context.Event()
    args = (str(folder), str(tmp_path / "cache"), ready)
    workers = [context.Process(target=_build_cache, args=args) for _ in range(2)]
    for worker in workers:
        worker.start()
    ready.set()
    for worker in workers:
        worker.join(timeout=120)
    assert [w.exitcode for w in workers] == [0, 0]
    entries = list((tmp_path / "cache").iterdir())
    assert len([e for e in entries if e.is_dir()]) == 1  # one cache, no partial leftovers
    seen = [np.load(p) for p in tmp_path.glob("seen-*.npy")]
    assert len(seen) == 2 and np.array_equal(seen[0], seen[1]) and seen[0].shape[0] > 0


# ---------------------------------------------------------------- end to end


@pytest.mark.slow
def test_fine_tuning_a_pretrained_backbone_on_photos_is_logged_and_loadable(tmp_path):
    """A folder of real photos in train/<class>/ at 224 px, SGD with momentum 0.5 and weight
    decay 1e-4, a pretrained backbone fine-tuned: logged to MLflow, loadable, and the
    logged model predicts what the best checkpoint predicts."""
    weights, _ = saved_test_resnet(tmp_path)
    folder = photo_folder(tmp_path / "photos", per_class=8, size=256)
    cfg = run_config(
        [
            *folder_overrides(tmp_path, folder, "dataset.source.image_size=224"),
            "dataset.batch_size=8",
            "optimizer=sgd",
            "optimizer.momentum=0.5",
            "optimizer.nesterov=false",
            "optimizer.weight_decay=1e-4",
            "trainer.epochs=2",
            *timm_overrides(weights, "model.freeze_backbone=true", "model.unfreeze_at_epoch=2"),
            *store_overrides(tmp_path),
        ]
    )
    run(cfg)
    (finished,) = all_runs(sqlite_uri(tmp_path))
    assert finished.info.status == "FINISHED"
    params = finished.data.params
    assert params["model.name"] == "test_resnet" and params["optimizer.momentum"] == "0.5"
    assert params["optimizer.weight_decay"] == "0.0001"
    client = mlflow.MlflowClient(sqlite_uri(tmp_path))
    trainable = client.get_metric_history(finished.info.run_id, "model/trainable_params")
    whole = sum(p.numel() for p in timm.create_model("test_resnet", num_classes=2).parameters())
    head = 96 * 2 + 2  # test_resnet's 96 features to 2 classes
    steps = sorted((m.step, m.value) for m in trainable)
    assert steps == [(0, head), (1, whole)]  # frozen in epoch 1, all trained from epoch 2
    (logged,) = mlflow.search_logged_models(
        experiment_ids=[finished.info.experiment_id], output_format="list"
    )
    loaded = mlflow.pytorch.load_model(logged.model_uri)
    example = torch.from_numpy(
        np.asarray(mlflow.models.Model.load(logged.model_uri).load_input_example())
    )
    net = build_model(cfg.model, (3, 224, 224), 2)
    net.load_state_dict(load_checkpoint(tmp_path / "checkpoints" / BEST)["model"])
    net.eval()
    # The logged model takes the raw uint8 images and answers probabilities: the run's
    # evaluation normalization (the model's own mean and std) and a softmax are inside it.
    assert example.dtype == torch.uint8
    dataset = RunConfig.enter(cfg).dataset
    normalize = BatchTransform(dataset.mean, dataset.std, torch.device("cpu")).normalized
    with torch.no_grad():
        expected = net(normalize(example)).softmax(1).numpy()
        got = loaded(example)
    got = got.numpy() if hasattr(got, "numpy") else np.asarray(got)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
