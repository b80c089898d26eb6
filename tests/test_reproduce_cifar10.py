"""The paper-reproduction path, end to end on fakes: fake CIFAR-10/100/SVHN classes, fake OOD folders, random B4."""

import json

import numpy as np
import pytest
from PIL import Image

from benchmarks import reproduce_cifar10


class FakeTorchvisionSet:
    """Stands in for a torchvision dataset class: seeded random 32x32 RGB images, integer targets."""

    shift = 0

    def __init__(self, root, train=True, transform=None, download=False):
        rng = np.random.default_rng(self.shift + (0 if train else 1))
        count = 64 if train else 24  # at least the k-NN baseline's default k = 50 training images
        self.images = rng.integers(self.shift, self.shift + 100, size=(count, 32, 32, 3), dtype=np.uint8)
        self.targets = list(rng.integers(0, 10, count))

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return Image.fromarray(self.images[index]), self.targets[index]


class FakeCIFAR10(FakeTorchvisionSet):
    shift = 0


class FakeCIFAR100(FakeTorchvisionSet):
    shift = 120


class FakeSVHN(FakeTorchvisionSet):
    shift = 150

    def __init__(self, root, split="train", transform=None, download=False):
        super().__init__(root, train=split == "train", download=download)


def test_reproduction_path_runs_end_to_end(tmp_path, monkeypatch, capsys):
    import torchvision.datasets

    for name, fake in (("CIFAR10", FakeCIFAR10), ("CIFAR100", FakeCIFAR100), ("SVHN", FakeSVHN)):
        monkeypatch.setattr(torchvision.datasets, name, fake)
    ood_root = tmp_path / "ood"
    for folder in ("iSUN", "dtd/images"):
        (ood_root / folder).mkdir(parents=True)
        for index in range(6):
            Image.new("RGB", (36, 36), (200, index * 30, 10)).save(ood_root / folder / f"{index}.jpg")
    out = tmp_path / "run"
    code = reproduce_cifar10.main(
        [
            "--data-root",
            str(tmp_path / "data"),
            "--ood-root",
            str(ood_root),
            "--out",
            str(out),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--weights",
            "random",
            "--input-size",
            "32",
            "--width",
            "32",
            "--depth",
            "1",
            "--epochs",
            "2",
            "--batch-size",
            "16",
            "--quiet",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "--backbone efficientnet_b4" in captured.out and "torchvision:CIFAR10:train" in captured.out
    assert "LSUN_resize" in captured.err  # missing folders are reported, not fatal
    report = json.loads((out / "evaluation.json").read_text())
    ood_sets = {row["ood_set"] for row in report["rows"]}
    assert ood_sets == {
        "torchvision:CIFAR100:test",
        "torchvision:SVHN:test",
        f"folder:{ood_root / 'iSUN'}",
        f"folder:{ood_root / 'dtd/images'}",
    }
    assert {row["score"] for row in report["rows"]} == {"mse", "mfsim", "lr", "knn", "mahalanobis"}


def test_paper_defaults():
    import argparse

    namespace = argparse.Namespace(
        backbone="efficientnet_b4",
        weights="pretrained",
        input_size=224,
        data_root="d",
        download=True,
        cache_dir=None,
        out="o",
        width=1440,
        depth=16,
        epochs=100,
        batch_size=256,
        lr=1e-4,
        ood_root="/nonexistent",
        timestep=5,
        quiet=False,
    )
    train, evaluate = reproduce_cifar10.build_commands(namespace)
    joined = " ".join(train)
    assert "--width 1440 --depth 16" in joined and "--input-size 224" in joined and "--download" in joined
    assert evaluate[evaluate.index("--ood") + 1 : evaluate.index("--train")] == [
        "torchvision:CIFAR100:test",
        "torchvision:SVHN:test",
    ]


def test_help(capsys):
    with pytest.raises(SystemExit):
        reproduce_cifar10.main(["--help"])
    assert "EfficientNet-B4" in capsys.readouterr().out
