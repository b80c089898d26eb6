"""The comparison: every method behind one call, the benchmark command, DLSR inside pytorch-ood, the app pieces."""

import json
from pathlib import Path

import numpy as np
import pytest
import shipped
import torch
from streamlit.testing.v1 import AppTest

from dlsr_core import explorer
from dlsr_core.baselines.classifier import ClassifierBaselines, ClassifierRecord, DetectorSettings
from dlsr_core.baselines.cnn import CNNConfig, CNNTrainConfig, train_cnn
from dlsr_core.baselines.feature_ae import (
    AutoencoderConfig,
    AutoencoderRecord,
    AutoencoderTrainConfig,
    train_feature_ae,
)
from dlsr_core.baselines.pixel_ddpm import PixelDDPM, PixelDDPMConfig, PixelRecord, ReconstructionSetting, build_unet
from dlsr_core.baselines.store import DEFAULT_BASELINES_DIR
from dlsr_core.comparison import METHODS, Baselines, ComparisonReport, MissingInputError, load_inputs, score_methods
from dlsr_core.data import open_dataset
from dlsr_core.validation import TrainingData

APP = str(Path(__file__).resolve().parent.parent / "app.py")
SETS = [shipped.ID_SET, "demo:letters", "demo:fashion_mnist_rotated"]


@pytest.fixture(scope="module")
def small_inputs(detector):
    """Features and pixels of 24 images of three demo sets (the backbone runs only on those)."""
    return load_inputs(detector, SETS, limit=24, seed=3)


def toy_records(detector) -> dict[str, object]:
    """Training records of small baselines fitted on the detector's training data."""
    data = TrainingData(shipped.EXPERIMENT.training_set, None, 24)
    return {
        "feature_ae": AutoencoderRecord(
            training_set=data,
            backbone=detector.backbone,
            weights=detector.info.weights,
            input_size=detector.input_size,
            stage_dims=tuple(detector.stage_dims),
            feature_options=detector.feature_options,
        ),
        "classifier": ClassifierRecord(training_set=data, classes=tuple(f"class {k}" for k in range(10))),
        "pixel_ddpm": PixelRecord(training_set=data, train_seconds=2.0),
    }


@pytest.fixture(scope="module")
def toy_baselines(detector, small_inputs, tmp_path_factory) -> Path:
    """Small baselines trained in seconds on the ID subset, saved like the shipped ones."""
    folder = tmp_path_factory.mktemp("baselines")
    ids = small_inputs[shipped.ID_SET]
    labels = torch.as_tensor(open_dataset(shipped.ID_SET).labels)[ids.indices]
    records = toy_records(detector)
    config = AutoencoderConfig(ids.features.shape[1], 32, 8)
    ae = train_feature_ae(ids.features, config, AutoencoderTrainConfig(2), records["feature_ae"])
    ae.save(folder / "feature_ae.safetensors")
    cnn = CNNConfig(num_classes=10, widths=(4, 8))
    net, _ = train_cnn(ids.pixels, labels, cnn, CNNTrainConfig(epochs=2, batch_size=8))
    ClassifierBaselines.fit(net, ids.pixels, labels, DetectorSettings(vim_dim=4), records["classifier"]).save(
        folder / "classifier.safetensors"
    )
    config = PixelDDPMConfig(block_out_channels=(8, 8, 8), norm_num_groups=4)
    torch.manual_seed(0)
    setting = ReconstructionSetting(levels=(100, 300))
    PixelDDPM.calibrated(build_unet(config), config, setting, ids.pixels[:8], records["pixel_ddpm"]).save(
        folder / "pixel_ddpm.safetensors"
    )
    return folder


def test_score_methods_gives_each_method_its_own_input(detector, small_inputs, toy_baselines):
    baselines = Baselines.load(toy_baselines, distance_train=small_inputs[shipped.ID_SET].features[:12])
    methods = baselines.available(detector)
    assert set(methods) == set(METHODS), "every method is available with all baselines and training features"
    results = score_methods(methods, small_inputs, detector, baselines)
    letters = small_inputs["demo:letters"]
    scores = {name: result.scores["demo:letters"] for name, result in results.items()}
    np.testing.assert_array_equal(scores["dice"], baselines.classifier.score("dice", letters.pixels))
    np.testing.assert_array_equal(scores["feature_ae"], baselines.feature_ae.score(letters.features))
    np.testing.assert_allclose(
        results["pixel_ddpm"].scores["demo:letters"], baselines.pixel_ddpm.score_pixels(letters.pixels), rtol=1e-5
    )
    np.testing.assert_array_equal(
        results["mfsim"].scores["demo:letters"], detector.score_features(letters.features, 5).mfsim
    )
    assert all(result.count == 72 and result.seconds > 0 for result in results.values())
    report = ComparisonReport(
        shipped.ID_SET,
        {"demo:letters": "far", "demo:fashion_mnist_rotated": "near"},
        {name: result.scores for name, result in results.items()},
    )
    markdown = report.to_markdown()
    assert "ID as the positive class" in markdown and markdown.count("\n| ") == len(methods)
    assert report.average("mfsim", "all").auroc == pytest.approx(
        np.mean([report.metric("mfsim", s).auroc for s in report.ood_sets])
    )
    with pytest.raises(MissingInputError, match="k-NN and Mahalanobis need"):
        score_methods(["knn"], small_inputs, detector, Baselines.load(toy_baselines))


def test_compare_methods_for_the_distributions_page(detector, small_inputs, toy_baselines):
    from dlsr_core.features import FeatureSet

    features = {
        spec: FeatureSet(inputs.features, detector.stage_dims, inputs.indices, 0, spec, detector.backbone)
        for spec, inputs in small_inputs.items()
    }
    baselines = Baselines.load(toy_baselines)
    addable = explorer.addable_methods(detector, baselines)
    assert addable == ["pixel_ddpm", "feature_ae", "msp", "energy", "dice", "ash_s", "react", "vim"]
    result = explorer.compare_methods(
        detector, ["energy", "pixel_ddpm"], shipped.ID_SET, features, baselines=baselines, pixel_images_per_set=5
    )
    assert result.methods == ["energy", "pixel_ddpm"]
    assert len(result.scores["pixel_ddpm"]["demo:letters"]) == 5 and len(result.scores["energy"]["demo:letters"]) == 24
    chosen = result.rows["pixel_ddpm"]["demo:letters"]
    expected = baselines.pixel_ddpm.score_pixels(small_inputs["demo:letters"].pixels[torch.as_tensor(chosen)])
    np.testing.assert_allclose(result.scores["pixel_ddpm"]["demo:letters"], expected, rtol=1e-5)
    rows = result.metrics_rows()
    assert {row["score"] for row in rows} == {"EBO (energy)", "Pixel DDPM"} and rows[-1]["OOD set"] == "average"
    assert all(row["img/s (cached input)"] > 0 for row in rows) and result.notes


def test_benchmark_runs_end_to_end_on_a_small_subset(tmp_path, toy_baselines):
    from benchmarks import compare

    kinds = ("pixel_ddpm", "feature_ae", "classifier")
    all_shipped = all((DEFAULT_BASELINES_DIR / f"{kind}.safetensors").is_file() for kind in kinds)
    folder = DEFAULT_BASELINES_DIR if all_shipped else toy_baselines
    compare.main(
        ["--subset", "8", "--speed-images", "8", "--pixel-settings", "0", "1", "--baselines", str(folder)]
        + ["--out", str(tmp_path), "--name", "smoke"]
    )
    summary = json.loads((tmp_path / "smoke.json").read_text())
    assert set(summary["methods"]) == set(METHODS)
    for record in summary["methods"].values():
        assert 0 <= record["average"]["all"]["auroc"] <= 1 and record["images_per_second_end_to_end"] > 0
    assert len(summary["pixel_ablation"]) == 2 and summary["speed_ratio_mfsim_over_pixel_ddpm"] > 0
    markdown = (tmp_path / "smoke.md").read_text()
    assert "ID as the positive class" in markdown and "oracle rows" in markdown
    # the main table's pixel DDPM is the shipped one: its setting is never chosen on the test sets
    shipped_setting = Baselines.load(folder).pixel_ddpm.setting.label()
    assert any(shipped_setting in note for note in summary["notes"])
    assert (tmp_path / "smoke.csv").read_text().count("\n") == 1 + len(METHODS) * 8


def test_dlsr_inside_pytorch_ood_gives_dlsr_core_scores(detector, tmp_path):
    from pytorch_ood.metrics import OODMetrics
    from torch.utils.data import ConcatDataset, DataLoader, Dataset

    from dlsr_core.metrics import ood_metrics
    from dlsr_core.ood_detector import DLSR
    from dlsr_core.training import TrainConfig

    ood_detector = DLSR.from_run()

    class Images(Dataset):
        def __init__(self, spec: str, label: int) -> None:
            self.images, self.label = open_dataset(spec), label

        def __len__(self) -> int:
            return 16

        def __getitem__(self, index: int):
            return ood_detector.transform(self.images[index]), self.label

    loader = DataLoader(ConcatDataset([Images(shipped.ID_SET, 0), Images("demo:letters", -1)]), batch_size=16)
    metrics, ours, reference = OODMetrics(), [], []
    for images, labels in loader:
        scores = ood_detector(images)  # pytorch-ood's Detector.__call__ -> predict
        metrics.update(scores, labels)
        ours.append(scores)
        reference.append(detector.score_features(ood_detector.encoder(images), 5).mfsim)
    ours, reference = torch.cat(ours).numpy(), np.concatenate(reference)
    np.testing.assert_array_equal(ours, reference)
    assert metrics.compute()["AUROC"] == pytest.approx(ood_metrics(reference[:16], reference[16:]).auroc)

    # fit: pytorch-ood's loader-based fitting trains an LFDN; its scores are those of the saved run.
    fresh = DLSR(
        encoder=ood_detector.encoder,
        input_size=detector.input_size,
        model_config=None,
        train_config=TrainConfig(epochs=1, batch_size=8),
        run_dir=tmp_path / "run",
    )
    fresh.model_config = type(detector.info.config)(feature_dim=detector.info.config.feature_dim, width=16, depth=1)
    fresh.fit(loader)
    features = ood_detector.encoder(next(iter(loader))[0])
    trained = type(detector).load(tmp_path / "run", device="cpu")
    np.testing.assert_array_equal(fresh.predict_features(features).numpy(), trained.score_features(features, 5).mfsim)
    assert trained.info.backbone == detector.backbone and trained.info.weights == "pretrained"


def test_feature_vs_pixel_core_and_page(detector, toy_baselines, monkeypatch):
    from dlsr_core.backbones import create_feature_extractor

    pixel_model = PixelDDPM.load(toy_baselines / "pixel_ddpm.safetensors")
    extractor = create_feature_extractor(detector.backbone, detector.backbone_weights())
    images = [open_dataset("demo:letters")[i] for i in range(3)]
    ids = load_inputs(detector, [shipped.ID_SET], pixels=False, limit=40)
    result = explorer.feature_vs_pixel(
        detector, pixel_model, extractor, images, id_features=ids[shipped.ID_SET].features
    )
    assert result.originals.shape == (3, 28, 28) and result.reconstructions.shape == (2, 3, 28, 28)
    np.testing.assert_allclose(result.pixel_scores, pixel_model.score_images(images), rtol=1e-5)
    assert result.stage_cos.shape == (3, len(detector.stage_dims)) and np.isfinite(result.dlsr_threshold95)
    assert result.speed_ratio == pytest.approx(result.pixel_seconds / result.dlsr_seconds)

    monkeypatch.setenv("DLSR_BASELINES_DIR", str(toy_baselines))
    app = AppTest.from_file(APP, default_timeout=240)
    app.run()
    app.switch_page("pages/feature_vs_pixel.py").run()
    assert not app.exception, [e.value for e in app.exception]
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["Pixel DDPM"].endswith(" s") and metrics["DLSR is faster by"].endswith("×")
    table = app.dataframe[0].value
    assert len(table) == 6 and set(table["pixel verdict"]) <= {"ID", "OOD"}
    assert "ID threshold" in "\n".join(c.value for c in app.caption)


def test_feature_vs_pixel_page_explains_a_missing_pixel_model(tmp_path, monkeypatch):
    monkeypatch.setenv("DLSR_BASELINES_DIR", str(tmp_path))
    app = AppTest.from_file(APP, default_timeout=240)
    app.run()
    app.switch_page("pages/feature_vs_pixel.py").run()
    assert not app.exception
    assert "python -m dlsr_core.baselines.train --only pixel_ddpm" in app.error[0].value


def test_baselines_are_offered_only_to_models_whose_inputs_they_were_trained_on(detector, toy_baselines, tmp_path):
    from dataclasses import replace

    from dlsr_core.presets import PRESETS

    loaded = Baselines.load(toy_baselines)
    assert {"feature_ae", "msp", "vim", "pixel_ddpm"} <= set(loaded.available(detector))
    ae_info = loaded.feature_ae.info
    loaded.feature_ae.info = replace(ae_info, feature_options=PRESETS["official"].features)
    assert "feature_ae" not in loaded.available(detector)
    loaded.feature_ae.info = replace(ae_info, input_size=detector.input_size * 2)
    assert "feature_ae" not in loaded.available(detector)
    other_data = TrainingData("folder:/somewhere/else")
    loaded.feature_ae.info = ae_info
    loaded.classifier.info = replace(loaded.classifier.info, training_set=other_data)
    loaded.pixel_ddpm.info = replace(loaded.pixel_ddpm.info, training_set=TrainingData(detector.info.dataset, "c0-5"))
    offered = loaded.available(detector)
    assert "feature_ae" in offered and "msp" not in offered and "pixel_ddpm" not in offered

    # A damaged file of any kind is listed in `problems` with its one-line reason, never raised.
    for kind in ("pixel_ddpm", "feature_ae", "classifier"):
        (tmp_path / f"{kind}.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    damaged = Baselines.load(tmp_path)
    assert set(damaged.problems) == {"pixel_ddpm", "feature_ae", "classifier"} and damaged.pixel_ddpm is None
    assert all(str(tmp_path) in reason and "\n" not in reason for reason in damaged.problems.values())


def test_the_apps_baselines_memo_follows_the_folder_and_retrained_files(toy_baselines, tmp_path, monkeypatch):
    import shutil

    monkeypatch.delenv("DLSR_BASELINES_DIR", raising=False)
    shipped_key = explorer.baselines_key()
    monkeypatch.setenv("DLSR_BASELINES_DIR", str(tmp_path))
    for path in toy_baselines.iterdir():
        shutil.copy2(path, tmp_path / path.name)
    copied = explorer.baselines_key()
    assert copied != shipped_key and explorer.baselines_key() == copied  # stable while nothing changes
    model = PixelDDPM.load(tmp_path / "pixel_ddpm.safetensors")
    model.save(tmp_path / "pixel_ddpm.safetensors")  # retrained (rewritten) in place
    assert explorer.baselines_key() != copied
