"""Baselines: agreement with pytorch-ood called directly, known answers, shipped weights and their digests."""

import shutil
import time

import numpy as np
import pytest
import torch

from dlsr_core import tv_compat  # noqa: F401  (pytorch_ood imports torchvision)

# isort: split
from pytorch_ood.detector import ASH, DICE, KNN, EnergyBased, Mahalanobis, MaxSoftmax, ReAct, ViM

from dlsr_core.baselines import KNNBaseline, MahalanobisBaseline
from dlsr_core.baselines import classifier as classifier_module
from dlsr_core.baselines import feature_ae as feature_ae_module
from dlsr_core.baselines import pixel_ddpm as pixel_ddpm_module
from dlsr_core.baselines.classifier import ClassifierBaselines, DetectorSettings
from dlsr_core.baselines.cnn import CNNConfig, CNNTrainConfig, build_cnn, predict, train_cnn
from dlsr_core.baselines.feature_ae import (
    AutoencoderConfig,
    AutoencoderTrainConfig,
    FeatureAEBaseline,
    train_feature_ae,
)
from dlsr_core.baselines.pixel_ddpm import PixelDDPM, PixelDDPMConfig, ReconstructionSetting, images_to_pixels
from dlsr_core.baselines.store import DEFAULT_BASELINES_DIR, BaselineFileError, load_baseline
from dlsr_core.diffusion import ConfigError

SHIPPED = {
    "pixel_ddpm": pixel_ddpm_module.FILE_KIND,
    "feature_ae": feature_ae_module.FILE_KIND,
    "classifier": classifier_module.FILE_KIND,
}


def stage_standardized(rows: int, stage_dims: tuple[int, ...], seed: int) -> torch.Tensor:
    """Random vectors with DLSR's structure: every stage standardized per sample (so each stage sums to zero)."""
    generator = torch.Generator().manual_seed(seed)
    parts = []
    for dim in stage_dims:
        raw = torch.randn(rows, dim, generator=generator) * torch.linspace(0.5, 2.0, dim) + torch.arange(dim) / dim
        parts.append((raw - raw.mean(dim=1, keepdim=True)) / raw.std(dim=1, keepdim=True))
    return torch.cat(parts, dim=1)


def test_knn_agrees_with_pytorch_ood_to_float_precision_and_is_kept_for_speed():
    dims = (16, 24, 40)
    train, queries = stage_standardized(3000, dims, 0), stage_standardized(400, dims, 1)
    ours = KNNBaseline(k=50).fit(train)
    theirs = KNN(None, k=50).fit_features(train, torch.zeros(len(train), dtype=torch.long))
    started = time.perf_counter()
    our_scores = ours.score(queries)
    our_seconds = time.perf_counter() - started
    started = time.perf_counter()
    their_scores = theirs.predict_features(queries).numpy()
    their_seconds = time.perf_counter() - started
    np.testing.assert_allclose(our_scores, their_scores, rtol=1e-5, atol=1e-6)
    print(f"\nk-NN on 400 x 3000: ours {our_seconds * 1e3:.1f} ms, pytorch-ood {their_seconds * 1e3:.1f} ms")


def test_mahalanobis_is_pytorch_ood_on_the_independent_stage_channels():
    dims = (16, 24, 40)
    train, queries = stage_standardized(2000, dims, 2), stage_standardized(300, dims, 3)
    wrapped = MahalanobisBaseline(dims).fit(train).score(queries)
    keep = torch.ones(sum(dims), dtype=torch.bool)
    keep[[15, 39, 79]] = False
    direct = Mahalanobis(None).fit_features(train[:, keep], torch.zeros(len(train), dtype=torch.long))
    np.testing.assert_array_equal(wrapped, direct.predict_features(queries[:, keep]).numpy())
    # Dropping one channel per stage loses nothing: the distance equals the pseudo-inverse one on all channels.
    data = train.double().numpy()
    centered = queries.double().numpy() - data.mean(axis=0)
    scatter = np.cov(data, rowvar=False) * (len(data) - 1)
    expected = 0.5 * np.einsum("nd,de,ne->n", centered, np.linalg.pinv(scatter, rcond=1e-8, hermitian=True), centered)
    np.testing.assert_allclose(wrapped, expected, rtol=2e-3)


def test_mahalanobis_refuses_stage_sizes_that_do_not_fit():
    with pytest.raises(ValueError, match="sum to"):
        MahalanobisBaseline((3, 3)).fit(torch.randn(10, 7))


def toy_images(rows: int, classes: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """8 x 8 grayscale images in [-1, 1] whose class is a texture (horizontal stripes, vertical stripes, checkerboard,
    flat), with noise; and their labels. A globally pooled CNN can tell textures apart wherever they are."""
    generator = torch.Generator().manual_seed(seed)
    grid = torch.arange(8)
    textures = torch.stack(
        [
            (grid[:, None] % 2).expand(8, 8),
            (grid[None, :] % 2).expand(8, 8),
            (grid[:, None] + grid[None, :]) % 2,
            torch.full((8, 8), 0.5),
        ]
    ).float()
    labels = torch.arange(rows) % classes
    images = 2 * textures[labels][:, None] - 1 + torch.randn(rows, 1, 8, 8, generator=generator) * 0.3
    return images.clamp(-1, 1), labels


def toy_classifier(seed: int = 0, vim_dim: int = 6):
    images, labels = toy_images(400, seed=seed)
    config = CNNConfig(num_classes=4, image_size=8, widths=(4, 12))
    net, record = train_cnn(images, labels, config, CNNTrainConfig(epochs=3, batch_size=32, shift=0, flip=False))
    model = ClassifierBaselines.fit(net, images, labels, DetectorSettings(vim_dim=vim_dim))
    return model, images, labels, record


def test_cnn_learns_a_separable_task_and_reports_validation_accuracy():
    images, labels = toy_images(400)
    held_out = toy_images(200, seed=1)
    config = CNNConfig(num_classes=4, image_size=8, widths=(4, 12))
    epochs = []
    train = CNNTrainConfig(epochs=6, batch_size=32, shift=1, flip=False)
    net, record = train_cnn(images, labels, config, train, held_out, epochs.append)
    assert [point["epoch"] for point in epochs] == [1, 2, 3, 4, 5, 6] and record["curve"] == epochs
    assert epochs[-1]["validation_accuracy"] >= 0.95 and epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    features, logits = predict(net, held_out[0])
    assert features.shape == (200, 12) and (features >= 0).all() and logits.shape == (200, 4)


def test_wrapped_classifier_detectors_equal_direct_pytorch_ood_calls(tmp_path):
    model, images, labels, _ = toy_classifier()
    model.save(tmp_path / "classifier.safetensors")
    loaded = ClassifierBaselines.load(tmp_path / "classifier.safetensors")  # only the fitted state is restored
    features = loaded.features(images)  # the float16-rounded network's, as fitted
    queries_images = torch.rand(60, 1, 8, 8, generator=torch.Generator().manual_seed(5)) * 2 - 1
    queries = loaded.features(queries_images)
    head = loaded.net.head
    on_maps = lambda maps: head(maps.flatten(1))  # noqa: E731
    maps = queries[:, :, None, None]
    direct = {
        "msp": MaxSoftmax(None).predict_logits(head(queries)),
        "energy": EnergyBased(None).predict_logits(head(queries)),
        "dice": DICE(None, head.weight, head.bias, p=0.9).fit_features(features, labels).predict_features(queries),
        "ash_s": ASH(None, on_maps, variant="ash-s", percentile=0.9).predict_feature_maps(maps),
        "react": ReAct(None, on_maps, percentile=0.9)
        .fit_feature_maps(features[:, :, None, None], labels)
        .predict_feature_maps(maps),
        "vim": ViM(None, 6, head.weight, head.bias).fit_features(features, labels).predict_features(queries),
    }
    for name, expected in direct.items():
        expected = expected.detach().double().numpy()
        np.testing.assert_array_equal(model.score(name, queries_images), loaded.score(name, queries_images))
        if name == "vim":  # its residual basis is rebuilt from the stored principal directions
            np.testing.assert_allclose(loaded.score(name, queries_images), expected, rtol=1e-5, atol=1e-5)
        else:
            np.testing.assert_allclose(loaded.score(name, queries_images), expected, rtol=1e-6, atol=1e-6)


def test_classifier_adapts_images_and_checks_inputs():
    model, images, _, _ = toy_classifier(seed=1)
    rgb_large = torch.nn.functional.interpolate(images[:5].expand(-1, 3, -1, -1), size=(16, 16), mode="nearest")
    np.testing.assert_allclose(model.score("msp", rgb_large), model.score("msp", images[:5]), atol=1e-5)
    with pytest.raises(KeyError, match="unknown classifier detector"):
        model.score("odin", images)
    with pytest.raises(ConfigError, match="images must be"):
        model.score("msp", images[:, 0])
    with pytest.raises(ConfigError, match="labels in 0..3"):
        train_cnn(images, torch.full((len(images),), 9), CNNConfig(num_classes=4, image_size=8, widths=(4,)))
    with pytest.raises(ConfigError, match="pool a 8-px image below one pixel"):
        CNNConfig(num_classes=4, image_size=8, widths=(4, 4, 4, 4, 4))


def test_detectors_are_fitted_on_the_float16_weights_that_are_stored(tmp_path):
    model, images, _, _ = toy_classifier(seed=2)
    for value in model.net.state_dict().values():
        if value.is_floating_point():
            assert torch.equal(value, value.half().float())
    model.save(tmp_path / "c.safetensors")
    loaded = ClassifierBaselines.load(tmp_path / "c.safetensors")
    assert loaded.react_threshold == model.react_threshold and loaded.settings == model.settings
    for name in classifier_module.DETECTOR_NAMES:
        np.testing.assert_array_equal(loaded.score(name, images[:20]), model.score(name, images[:20]))
    build_cnn(loaded.config)  # the stored config rebuilds the network


def test_feature_autoencoder_learns_its_training_data_and_round_trips(tmp_path):
    generator = torch.Generator().manual_seed(0)
    basis = torch.randn(4, 32, generator=generator)
    train = torch.randn(600, 4, generator=generator) @ basis  # a 4-d subspace of 32-d
    outliers = torch.randn(50, 32, generator=generator) * train.std()
    model = train_feature_ae(train, AutoencoderConfig(32, hidden=64, bottleneck=8), AutoencoderTrainConfig(epochs=40))
    inliers = torch.randn(50, 4, generator=generator) @ basis
    assert np.median(model.score(inliers)) * 5 < np.median(model.score(outliers))
    model.save(tmp_path / "ae.safetensors")
    loaded = FeatureAEBaseline.load(tmp_path / "ae.safetensors")
    np.testing.assert_allclose(loaded.score(inliers), model.score(inliers), rtol=2e-2, atol=1e-3)
    with pytest.raises(ConfigError, match="32-d"):
        loaded.score(torch.randn(3, 31))
    assert loaded.info.train_features == 600 and loaded.info.parameters == model.info.parameters


def test_pixel_settings_are_validated():
    config = PixelDDPMConfig()
    unet_free = ReconstructionSetting(levels=(100, 150), stride=100)
    with pytest.raises(ConfigError, match="not a multiple"):
        PixelDDPM(None, config, unet_free, torch.zeros(2), torch.ones(2))
    with pytest.raises(ConfigError, match="must be in"):
        PixelDDPM(None, config, ReconstructionSetting(levels=(1000,)), torch.zeros(1), torch.ones(1))
    assert ReconstructionSetting(levels=(100, 200), stride=50).evaluations() == 6


@pytest.fixture(scope="module")
def pixel_model() -> PixelDDPM:
    path = DEFAULT_BASELINES_DIR / "pixel_ddpm.safetensors"
    if not path.is_file():
        pytest.skip("no shipped pixel DDPM (python -m dlsr_core.baselines.train --only pixel_ddpm)")
    return PixelDDPM.load(path)


def demo_pixels(count: int, spec: str = "demo:fashion_mnist_test") -> torch.Tensor:
    from dlsr_core.data import open_dataset

    dataset = open_dataset(spec)
    return images_to_pixels([dataset[i] for i in range(count)])


def test_pixel_ddpm_reconstructs_from_a_little_noise_but_not_from_a_lot(pixel_model):
    pixels = demo_pixels(8)
    errors = {}
    for level in (20, 900):
        setting = ReconstructionSetting(levels=(level,), stride=0)
        model = PixelDDPM(pixel_model.unet, pixel_model.config, setting, torch.zeros(1), torch.ones(1))
        errors[level] = model.errors(pixels)[:, 0]
    # pixels are in [-1, 1]: an error of 0.01 is a 5% pixel deviation, 0.2 means the garment is not rebuilt
    assert errors[20].max() < 0.01, errors[20]
    assert errors[900].min() > 0.1, errors[900]


def test_pixel_ddpm_scores_an_image_the_same_in_any_batch(pixel_model):
    pixels = demo_pixels(6)
    together = pixel_model.score_pixels(pixels)
    alone = np.concatenate([pixel_model.score_pixels(pixels[i : i + 1]) for i in range(3)])
    np.testing.assert_allclose(alone, together[:3], rtol=1e-4, atol=1e-4)


# Recorded with the shipped classifier: its accuracy on all 10,000 Fashion-MNIST test images. This test re-measures
# it on the first 500 (reported numbers come from the training script, not from here).
CLASSIFIER_ACCURACY_FLOOR = 0.92


def test_shipped_classifier_reaches_its_recorded_test_accuracy():
    from dlsr_core.baselines.cnn import accuracy
    from dlsr_core.baselines.images import labelled_images

    path = DEFAULT_BASELINES_DIR / "classifier.safetensors"
    if not path.is_file():
        pytest.skip("no shipped classifier")
    model = ClassifierBaselines.load(path)
    assert model.info.test_accuracy >= CLASSIFIER_ACCURACY_FLOOR and model.info.validation_accuracy >= 0.9
    assert model.info.training_set.subset == "i % 12 != 11" and model.info.training_set.images == 55_000
    images, labels, classes, _ = labelled_images("fashion_mnist:test", np.arange(500))
    measured = accuracy(model.net, images, labels)
    print(f"\nshipped CNN: {measured:.3f} on the first 500 test images, recorded {model.info.test_accuracy:.4f}")
    assert measured >= CLASSIFIER_ACCURACY_FLOOR - 0.02 and classes == model.info.classes


@pytest.mark.parametrize("kind", list(SHIPPED))
def test_shipped_baselines_load_and_verify_their_digests(kind, tmp_path):
    path = DEFAULT_BASELINES_DIR / f"{kind}.safetensors"
    if not path.is_file():
        pytest.skip(f"no shipped {kind} baseline")
    stored = load_baseline(path, SHIPPED[kind])
    assert stored.info.train_seconds > 0 and stored.tensors
    assert stored.info.training_set.dataset == "fashion_mnist:train"
    copy = tmp_path / path.name
    shutil.copy(path, copy)
    shutil.copy(path.with_name(path.name + ".sha256"), copy.with_name(copy.name + ".sha256"))
    data = bytearray(copy.read_bytes())
    data[-10] ^= 0xFF
    copy.write_bytes(bytes(data))
    with pytest.raises(BaselineFileError, match="checksum file"):
        load_baseline(copy, SHIPPED[kind])
    copy.with_name(copy.name + ".sha256").unlink()
    with pytest.raises(BaselineFileError, match="digest stored inside"):
        load_baseline(copy, SHIPPED[kind])
    other = next(spec for name, spec in SHIPPED.items() if name != kind)
    with pytest.raises(BaselineFileError, match="is not a"):
        load_baseline(path, other)


def test_shipped_baselines_fit_in_the_size_budget():
    folder = DEFAULT_BASELINES_DIR
    if not folder.is_dir():
        pytest.skip("no shipped baselines")
    baselines = sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())
    total = sum(path.stat().st_size for path in folder.parent.rglob("*") if path.is_file())
    assert baselines <= 8e6, f"checkpoints/baselines holds {baselines / 1e6:.1f} MB, its budget is 8 MB"
    assert total <= 45e6, f"checkpoints/ holds {total / 1e6:.1f} MB, the budget is 45 MB"
