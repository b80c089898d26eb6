"""The paper-reproduction path end to end on fakes (fake CIFAR/SVHN classes, fake OOD folders, random B4), and the
"ours / paper / difference" comparison against a known report."""

import argparse
import json

import numpy as np
import pytest
from PIL import Image
from test_app_pages import open_page, texts

from benchmarks import reproduce_cifar10, reproduce_paper
from dlsr_core.data import EXPERIMENT_NAME, load_experiment


class FakeTorchvisionSet:
    """Stands in for a torchvision dataset class: seeded random 32x32 RGB images, integer targets."""

    shift = 0

    def __init__(self, root, train=True, transform=None, download=False):
        rng = np.random.default_rng(self.shift + (0 if train else 1))
        count = 64 if train else 24
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


def test_cifar100_reproduction_runs_end_to_end_and_compares_with_the_paper(tmp_path, monkeypatch, capsys):
    import torchvision.datasets

    for name, fake in (("CIFAR10", FakeCIFAR10), ("CIFAR100", FakeCIFAR100), ("SVHN", FakeSVHN)):
        monkeypatch.setattr(torchvision.datasets, name, fake)
    ood_root = tmp_path / "ood"
    for folder in ("LSUN", "dtd/images"):
        (ood_root / folder).mkdir(parents=True)
        for index in range(6):
            Image.new("RGB", (36, 36), (200, index * 30, 10)).save(ood_root / folder / f"{index}.jpg")
    out = tmp_path / "run"
    options = ["--data-root", str(tmp_path / "data"), "--ood-root", str(ood_root), "--out", str(out)]
    options += ["--cache-dir", str(tmp_path / "cache"), "--weights", "random", "--input-size", "32"]
    options += ["--width", "32", "--depth", "1", "--epochs", "2", "--batch-size", "16", "--quiet"]
    code = reproduce_paper.main(["--id", "cifar100", *options])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "--backbone efficientnet_b4" in captured.out and "--preset official" in captured.out
    assert "LSUN_resize" in captured.err  # missing folders are reported, not fatal
    report = json.loads((out / "evaluation.json").read_text())
    assert report["preset"] == "official" and report["scoring"]["sampler"] == "official"
    assert {row["ood_set"] for row in report["rows"]} == {
        "torchvision:SVHN:test",
        f"folder:{ood_root / 'LSUN'}",
        f"folder:{ood_root / 'dtd/images'}",
        "torchvision:CIFAR10:test",
    }
    comparison = json.loads((out / "paper_comparison.json").read_text())
    table = comparison["table3_cifar100"]
    svhn = table["rows"]["SVHN"]["mfsim"]
    mine = 100 * next(
        r["auroc"] for r in report["rows"] if r["ood_set"] == "torchvision:SVHN:test" and r["score"] == "mfsim"
    )
    assert svhn["paper"] == 93.90 and svhn["ours"] == pytest.approx(mine)
    assert svhn["cell"] == f"{mine:.2f} / 93.90 / {mine - 93.90:+.2f}"
    assert table["rows"]["LSUN-r"]["mse"]["cell"] == "— / 75.38 / —"
    assert table["average_over"] == "3 of 6 sets (partial)"
    assert "93.90 /" in (out / "paper_comparison.md").read_text()

    # The run carries the setting's experiment file, and the app opens it with evaluate's numbers.
    experiment = load_experiment(out / EXPERIMENT_NAME)
    assert experiment.training_set == "torchvision:CIFAR100:train"
    assert (
        experiment.id_set.spec == "torchvision:CIFAR100:test"
        and experiment.groups["torchvision:CIFAR10:test"] == "near"
    )
    assert experiment.names[f"folder:{ood_root / 'LSUN'}"] == "LSUN-c"
    assert experiment.names[f"folder:{ood_root / 'LSUN_resize'}"] == "LSUN-r"  # listed, though missing here
    monkeypatch.setenv("DLSR_RUN_DIR", str(out))
    monkeypatch.setenv("DLSR_CACHE_DIR", str(tmp_path / "cache"))
    app = open_page("pages/distributions.py")
    page = app.dataframe[0].value
    assert page.loc["SVHN (far)", ("MFsim", "AUROC")] == pytest.approx(mine, abs=0.006)
    assert page.loc["CIFAR-10 (near)", ("MSE", "AUROC")] == pytest.approx(
        100
        * next(
            r["auroc"] for r in report["rows"] if r["ood_set"] == "torchvision:CIFAR10:test" and r["score"] == "mse"
        ),
        abs=0.006,
    )
    assert "**LSUN-r**" in texts(app) and "is not a directory" in texts(app)  # named as not available here


def test_comparison_known_answer_and_table4():
    rows = [
        {"ood_set": "torchvision:SVHN:test", "score": "mse", "auroc": 0.8},
        {"ood_set": "torchvision:SVHN:test", "score": "mfsim", "auroc": 0.9},
        {"ood_set": "torchvision:SVHN:test", "score": "lr", "auroc": 0.7},
    ]
    comparison = reproduce_paper.compare({"rows": rows}, "cifar100", "/nonexistent", width=720, depth=16)
    svhn = comparison["table3_cifar100"]["rows"]["SVHN"]
    assert svhn["mse"]["difference"] == pytest.approx(80.0 - 83.93)
    assert svhn["mfsim"]["cell"] == "90.00 / 93.90 / -3.90"
    average = comparison["table3_cifar100"]["rows"]["average"]["mfsim"]
    assert average["ours"] == pytest.approx(90.0) and average["paper"] == 97.20
    assert comparison["table4"]["rows"]["width 720"]["mfsim"]["paper"] == 96.43
    cifar10 = reproduce_paper.compare({"rows": rows}, "cifar10", "/nonexistent")
    assert set(cifar10) == {"table1", "table3"}
    assert cifar10["table1"]["rows"]["SVHN"]["mfsim"]["paper"] == 98.9
    assert cifar10["table1"]["rows"]["Omniglot"]["lr"]["cell"] == "— / 97.10 / —"


def test_paper_results_file_matches_the_papers_headline_numbers():
    tables = reproduce_paper.paper_tables()
    assert tables["table1"]["cells"]["average"]["DLSR+MFsim"] == {"auroc": 99.7, "std": 0.1}
    assert tables["table1"]["images_per_second"]["DLSR+MFsim"] == 999.3
    assert tables["table3_cifar100"]["cells"]["average"]["DLSR+MFsim"]["auroc"] == 97.20
    assert len(tables["table3"]["cells"]) == 7 and len(tables["table3"]["cells"]["SVHN"]) == 9


def test_cifar10_commands_cover_tables_1_and_3(tmp_path):
    (tmp_path / "iSUN").mkdir()
    namespace = argparse.Namespace(
        id="cifar10",
        backbone="efficientnet_b4",
        weights="pretrained",
        input_size=224,
        data_root="d",
        download=True,
        cache_dir=None,
        out="o",
        preset="official",
        width=1440,
        depth=16,
        epochs=None,
        batch_size=None,
        lr=None,
        timestep=None,
        baselines=True,
        ood_root=str(tmp_path),
        quiet=False,
    )
    train, evaluate = reproduce_paper.build_commands(namespace)
    joined = " ".join(train)
    assert "--width 1440 --depth 16" in joined and "--input-size 224" in joined and "--download" in joined
    assert "--preset official" in joined and "--epochs" not in joined  # the preset's 150 epochs
    sets = ["--experiment", str(reproduce_paper.experiment_file("cifar10")), "--sets-root", str(tmp_path)]
    assert joined.count(" ".join(sets)) == 1 and " ".join(sets) in " ".join(evaluate)  # the sets: the experiment
    assert "--id" not in evaluate and "--ood" not in evaluate
    assert list(reproduce_paper.ood_sets("cifar10", str(tmp_path))) == [
        "torchvision:SVHN:test",
        "torchvision:MNIST:test",
        "torchvision:FashionMNIST:test",
        "torchvision:KMNIST:test",
        "torchvision:Omniglot:test",
        f"folder:{tmp_path / 'iSUN'}",
        "torchvision:CIFAR100:test",
    ]
    assert reproduce_paper.ood_sets("cifar10", str(tmp_path))[f"folder:{tmp_path / 'iSUN'}"] == {"table3": "iSUN"}
    (tmp_path / "LSUN").mkdir()
    assert reproduce_paper.ood_sets("cifar10", str(tmp_path))[f"folder:{tmp_path / 'LSUN'}"] == {
        "table1": "LSUN",
        "table3": "LSUN-c",
    }  # Table 1's LSUN is the cropped set
    assert "-t" not in evaluate  # the checkpoint's preset picks the timestep


def test_help(capsys):
    with pytest.raises(SystemExit):
        reproduce_cifar10.main(["--help"])
    assert "ours / paper / difference" in " ".join(capsys.readouterr().out.split())  # argparse wraps lines
