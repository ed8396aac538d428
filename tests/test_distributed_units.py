"""The pieces of a distributed run that need no process group: how the ranks split an
epoch and the evaluation splits, the batch-size rule and the SyncBatchNorm rule."""

from __future__ import annotations

import pytest
import torch

from experiment.config.schema import DatasetConf
from experiment.data.datasets import ImageTensors
from experiment.data.loaders import Augmentation, BatchTransform, DeviceLoader, build_loaders
from experiment.errors import ConfigValueError
from experiment.runtime.distributed import Ranks, per_rank_batch
from experiment.training.builders import use_sync_batchnorm

CPU = torch.device("cpu")


def _loader(n: int, batch_size: int, ranks: Ranks, augment: bool = False) -> DeviceLoader:
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 3, 3).contiguous()
    transform = BatchTransform(
        [0.0], [1.0 / 255.0], CPU, augment=Augmentation(hflip=True) if augment else None
    )
    generator = torch.Generator().manual_seed(7)  # the same seed on every rank
    return DeviceLoader(
        images,
        torch.arange(n),
        batch_size,
        transform,
        shuffle=True,
        generator=generator,
        ranks=ranks,
    )


@pytest.mark.parametrize(("n", "batch_size", "world"), [(103, 10, 2), (100, 12, 4), (41, 8, 4)])
def test_ranks_split_each_global_batch_of_the_single_process_epoch(n, batch_size, world):
    single = [y for _, y in _loader(n, batch_size, Ranks())]
    shares = [
        [y for _, y in _loader(n, batch_size, Ranks(rank, world, world, "gloo"))]
        for rank in range(world)
    ]
    assert len({len(s) for s in shares}) == 1  # every rank steps the same number of times
    assert all(len(batch) > 0 for share in shares for batch in share)
    merged = [torch.cat(parts) for parts in zip(*shares, strict=True)]
    seen = torch.cat(merged).tolist()
    assert sorted(seen) == list(range(n))  # each sample once: none twice, none skipped
    if len(merged) == len(single):  # global batch i holds single-process batch i
        for mine, theirs in zip(merged, single, strict=True):
            assert sorted(mine.tolist()) == sorted(theirs.tolist())


def test_a_tail_too_small_for_every_rank_joins_the_batch_before_it():
    loader = _loader(41, 8, Ranks(0, 4, 4, "gloo"))  # 5 full global batches and 1 left over
    assert len(loader) == 5
    assert [len(y) for _, y in loader] == [2, 2, 2, 2, 3]


def test_augmented_images_stay_with_their_labels_on_every_rank():
    for rank in range(2):
        for images, labels in _loader(30, 6, Ranks(rank, 2, 2, "gloo"), augment=True):
            # Each image is its label's constant value, flipped or not.
            assert torch.equal(images[:, 0, 0, 0].long(), labels)


def dataset_node(**extra):
    """A `dataset` config node for grey 2x2 images, batches of 8 (evaluation: 4)."""
    return DatasetConf(
        mean=[0.0],
        std=[1.0],
        augment=False,
        crop_padding=0,
        hflip=False,
        batch_size=8,
        eval_batch_size=4,
        **extra,
    )


def test_evaluation_splits_are_shared_out_without_repeats():
    source = ImageTensors(
        train_images=torch.zeros(60, 1, 2, 2, dtype=torch.uint8),
        train_labels=torch.arange(60) % 3,
        test_images=torch.zeros(25, 1, 2, 2, dtype=torch.uint8),
        test_labels=torch.arange(25) % 3,
        classes=["a", "b", "c"],
    )
    cfg = dataset_node(val_fraction=0.2, split_seed=0)
    counts = {"val": 0, "test": 0}
    for rank in range(3):
        data = build_loaders(cfg, source, CPU, ranks=Ranks(rank, 3, 3, "gloo"))
        counts["val"] += sum(len(y) for _, y in data.val)
        counts["test"] += sum(len(y) for _, y in data.test)
    assert counts == {"val": 12, "test": 25}


def test_image_folders_without_the_cache_count_each_sample_once_across_ranks(tmp_path):
    """The DataLoader path shares out an epoch as the in-memory path does: the same
    seeded order on every rank, every world_size-th sample each, no repeats."""
    from torch.utils.data import TensorDataset

    from experiment.data.datasets import FolderSplits

    images = torch.zeros(30, 1, 2, 2, dtype=torch.uint8)
    source = FolderSplits(
        train=TensorDataset(images, torch.arange(30)),
        val=TensorDataset(images[:10], torch.arange(10)),
        test=TensorDataset(images[:7], torch.arange(7)),
        classes=["a", "b"],
        input_shape=(1, 2, 2),
    )
    cfg = dataset_node(num_workers=0)
    seen = {"train": [], "test": []}
    for rank in range(2):
        data = build_loaders(cfg, source, CPU, ranks=Ranks(rank, 2, 2, "gloo"))
        data.seed_epoch(5)
        first = torch.cat([y for _, y in data.train]).tolist()
        data.seed_epoch(5)
        assert torch.cat([y for _, y in data.train]).tolist() == first  # (seed, epoch)
        data.seed_epoch(6)
        assert torch.cat([y for _, y in data.train]).tolist() != first
        data.seed_epoch(5)
        assert [len(y) for _, y in data.train] == [4, 4, 4, 3]  # 8 / 2 ranks, then the rest
        seen["train"] += first
        seen["test"] += torch.cat([y for _, y in data.test]).tolist()
    assert sorted(seen["train"]) == list(range(30))  # each sample once: no padding
    assert sorted(seen["test"]) == list(range(7))  # evaluation: each sample once


def test_both_data_paths_share_out_an_epoch_by_the_same_rule():
    """In memory or through a DataLoader, each rank takes as many batches of the same
    sizes, and the ranks together see each sample once (31 = 3 x 8 + 7: the tail of 7
    is a batch of its own; of 25 = 3 x 8 + 1, the one sample joins the last batch)."""
    from torch.utils.data import TensorDataset

    from experiment.data.datasets import FolderSplits

    expected = {31: [[4, 4, 4, 4], [4, 4, 4, 3]], 25: [[4, 4, 5], [4, 4, 4]]}  # per rank
    for samples, sizes in expected.items():
        images = torch.zeros(samples, 1, 2, 2, dtype=torch.uint8)
        labels = torch.arange(samples)
        paths = {
            "in memory": ImageTensors(
                images, labels, images[:5], labels[:5], ["a"], images, labels
            ),
            "DataLoader": FolderSplits(
                train=TensorDataset(images, labels),
                val=TensorDataset(images, labels),
                test=TensorDataset(images[:5], labels[:5]),
                classes=["a"],
                input_shape=(1, 2, 2),
            ),
        }
        for path, source in paths.items():
            seen = []
            for rank in range(2):
                data = build_loaders(dataset_node(), source, CPU, ranks=Ranks(rank, 2, 2, "gloo"))
                data.seed_epoch(4)
                batches = [y.tolist() for _, y in data.train]
                assert [len(b) for b in batches] == sizes[rank], path
                seen += [label for batch in batches for label in batch]
            assert sorted(seen) == list(range(samples)), path


def test_the_global_batch_must_split_evenly():
    assert per_rank_batch(64, 4) == 16
    with pytest.raises(ConfigValueError, match="batch_size.*30.*multiple of the world size 4"):
        per_rank_batch(30, 4)


def test_sync_batchnorm_follows_the_option_on_gpus_and_is_refused_on_cpu():
    two = Ranks(0, 2, 2, "gloo")
    assert use_sync_batchnorm(None, two, CPU) is False  # PyTorch's SyncBatchNorm: GPUs only
    assert use_sync_batchnorm(None, Ranks(), torch.device("cuda", 0)) is False
    assert use_sync_batchnorm(None, two, torch.device("cuda", 0)) is True
    assert use_sync_batchnorm(False, two, torch.device("cuda", 0)) is False
    with pytest.raises(ConfigValueError, match="sync_batchnorm"):
        use_sync_batchnorm(True, two, CPU)


def test_a_sweep_under_torchrun_is_refused_with_the_way_to_do_it(monkeypatch):
    from experiment.errors import SweepError
    from experiment.sweep.sweeper import SweepEngine

    sweeper = SweepEngine(None, 2, 1, None, None, None, 0, None, None)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SweepError, match="devices_per_trial"):
        sweeper.settings.check()
    monkeypatch.setenv("WORLD_SIZE", "1")
    sweeper.settings.check()  # one process: fine
