"""Training the baselines: the validation split, the pixel DDPM's held-out loss, stopping rule and resume, the
setting-scoring function, the model card's figures, and the classifier's generic data loading."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from dlsr_core.baselines import pixel_training
from dlsr_core.baselines.figures import image_grid_png, loss_curve_png
from dlsr_core.baselines.images import infer_image_shape, labelled_images
from dlsr_core.baselines.pixel_ddpm import (
    PixelDDPM,
    PixelDDPMConfig,
    ReconstructionSetting,
    build_unet,
    sample_images,
    score_setting,
)
from dlsr_core.diffusion import ConfigError
from dlsr_core.metrics import ood_metrics
from dlsr_core.validation import (
    FIT_RULE,
    TrainingData,
    evenly_spaced,
    fit_indices,
    training_data_matches,
    validation_indices,
)

TINY = PixelDDPMConfig(block_out_channels=(8, 8, 8), norm_num_groups=4)


def test_validation_split_is_every_twelfth_image_and_disjoint_from_the_fit_set():
    validation, fit = validation_indices(), fit_indices()
    assert len(validation) == 5_000 and len(fit) == 55_000
    assert (validation % 12 == 11).all() and not (fit % 12 == 11).any()
    assert np.array_equal(np.sort(np.concatenate([validation, fit])), np.arange(60_000))
    assert np.all(np.diff(validation) > 0) and np.all(np.diff(fit) > 0)
    assert validation_indices(24).tolist() == [11, 23] and fit_indices(13).tolist() == [*range(11), 12]
    with pytest.raises(ValueError, match="non-negative integer"):
        validation_indices(-1)
    assert evenly_spaced(validation, 1000, 1)[:3].tolist() == [23, 83, 143]
    assert not set(evenly_spaced(validation, 1000, 0)) & set(evenly_spaced(validation, 1000, 1))
    with pytest.raises(ValueError, match="offset"):
        evenly_spaced(validation, 1000, 5)


def test_training_data_match_keeps_class_restricted_subsets_apart():
    fit = TrainingData("fashion_mnist:train", FIT_RULE, 55_000)
    assert training_data_matches(fit, "fashion_mnist:train")  # the shipped LFDN: all 60,000 images
    assert training_data_matches(fit, "fashion_mnist:train", FIT_RULE)
    assert not training_data_matches(fit, "folder:/data/cats")
    assert not training_data_matches(fit, "fashion_mnist:train", "classes 0-5")
    held_out_classes = TrainingData("fashion_mnist:train", "classes 0-5")
    assert training_data_matches(held_out_classes, "fashion_mnist:train", "classes 0-5")
    assert not training_data_matches(held_out_classes, "fashion_mnist:train")
    assert not training_data_matches(None, "fashion_mnist:train")
    # The split's parts by name (the shipped model trains on `fashion_mnist:fit`): fit-set baselines belong to it.
    assert training_data_matches(fit, "fashion_mnist:fit")
    assert not training_data_matches(fit, "fashion_mnist:val")
    assert not training_data_matches(held_out_classes, "fashion_mnist:fit")
    assert training_data_matches(TrainingData("fashion_mnist:fit"), "fashion_mnist:train", FIT_RULE)


def toy_pixels(count: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(count, 1, 28, 28, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_probe_loss_is_fixed_by_the_seed_and_covers_all_timesteps():
    pixels = toy_pixels(20)
    probe = pixel_training.make_probe(pixels, 1000, seed=3)
    again = pixel_training.make_probe(pixels, 1000, seed=3)
    assert torch.equal(probe.noise, again.noise) and torch.equal(probe.timesteps, again.timesteps)
    assert sorted(probe.timesteps.tolist()) == [25 + 50 * i for i in range(20)]  # one per 50-step band
    torch.manual_seed(0)
    unet = build_unet(TINY)
    first = pixel_training.heldout_loss(unet, TINY, probe, batch_size=7)
    assert first == pixel_training.heldout_loss(unet, TINY, probe, batch_size=7)  # no draw: the same number
    assert first == pytest.approx(pixel_training.heldout_loss(unet, TINY, probe, batch_size=20), rel=1e-6)
    # known answer: a network predicting zero noise has loss = mean squared noise
    zero = torch.nn.Module()
    zero.training = False
    zero.forward = lambda sample, timesteps: type("Out", (), {"sample": torch.zeros_like(sample)})()
    zero.eval = lambda: zero
    zero.train = lambda mode=True: zero
    assert pixel_training.heldout_loss(zero, TINY, probe) == pytest.approx(probe.noise.pow(2).mean().item(), rel=1e-6)


@pytest.mark.parametrize(
    ("losses", "stops"),
    [
        ([1.0, 0.9, 0.8, 0.7, 0.6], False),  # still falling
        ([1.0, 0.5, 0.6, 0.55, 0.52], True),  # no new best in the last 3
        ([1.0, 0.5, 0.6, 0.55, 0.4995], True),  # a new best, but by less than 0.2%
        ([1.0, 0.5, 0.6, 0.55, 0.498], False),  # a new best by 0.4%
        ([1.0, 0.9, 0.95], False),  # too few evaluations to judge
    ],
)
def test_plateau_rule(losses, stops):
    assert pixel_training.plateau_reached(losses, patience=3, min_relative_improvement=0.002) is stops


def test_recent_slope_is_the_least_squares_slope_per_thousand_steps():
    curve = [{"step": step, "heldout_loss": 1.0 - 0.002 * step / 100} for step in (100, 200, 300, 400, 500)]
    assert pixel_training.recent_slope(curve, points=4) == pytest.approx(-0.02)
    assert np.isnan(pixel_training.recent_slope(curve[:1]))


def test_pixel_training_resumes_exactly_and_refuses_other_settings(tmp_path):
    pixels, probe = toy_pixels(40), pixel_training.make_probe(toy_pixels(10, 1), 1000)
    train = pixel_training.PixelTrainConfig(batch_size=8, eval_every=5, max_steps=20)
    straight = pixel_training.run_training(pixels, probe, TINY, train, None)
    resume = tmp_path / "resume.safetensors"
    shorter = pixel_training.PixelTrainConfig(batch_size=8, eval_every=5, max_steps=10)
    half = pixel_training.run_training(pixels, probe, TINY, shorter, resume)
    assert half.stopped == "max_steps" and half.step == 10
    resumed = pixel_training.run_training(pixels, probe, TINY, train, resume)  # a larger step limit continues
    assert resumed.step == 20 and [p["heldout_loss"] for p in resumed.curve] == [
        p["heldout_loss"] for p in straight.curve
    ]
    for name, value in straight.best.state_dict().items():
        assert torch.equal(value, resumed.best.state_dict()[name]), name
    same = ("step", "epochs", "heldout_loss", "train_loss_smoothed")
    assert [{k: p[k] for k in same} for p in resumed.curve] == [{k: p[k] for k in same} for p in straight.curve]
    with pytest.raises(ConfigError, match="other settings or training data"):
        pixel_training.run_training(pixels[:30], probe, TINY, train, resume)
    resume.write_bytes(b"garbage")
    with pytest.raises(ConfigError, match="cannot be resumed from"):
        pixel_training.run_training(pixels, probe, TINY, train, resume)


def test_pixel_training_stops_on_its_budget_and_records_how_far_it_got(tmp_path):
    pixels, probe = toy_pixels(40), pixel_training.make_probe(toy_pixels(10, 1), 1000)
    train = pixel_training.PixelTrainConfig(batch_size=8, eval_every=3)
    state = pixel_training.run_training(pixels, probe, TINY, train, None, max_seconds=0.0)
    assert state.stopped == "budget" and state.step == 3 and len(state.curve) == 1
    summary = pixel_training.curve_summary(state, train, len(pixels))
    assert summary["epochs"] == pytest.approx(3 * 8 / 40) and summary["last_slope_per_1000_steps"] is None
    assert "0.2%" in summary["stopping_rule"] and summary["best_step"] == 3


def test_score_setting_scores_validation_images_with_a_recalibrated_model():
    torch.manual_seed(0)
    model = PixelDDPM.calibrated(build_unet(TINY), TINY, ReconstructionSetting(levels=(100, 300)), toy_pixels(6))
    calibration, ids, ood = toy_pixels(6, 1), toy_pixels(5, 2), {"noise": torch.zeros(4, 1, 28, 28)}
    setting = ReconstructionSetting(levels=(50,))
    result = score_setting(model, setting, calibration, ids, ood, calibration=TrainingData("x", "y", 6))
    assert result.model.setting == setting and result.model.info.calibration == TrainingData("x", "y", 6)
    np.testing.assert_allclose(result.scores["id"], result.model.score_pixels(ids), rtol=1e-5)
    assert result.auroc["noise"] == ood_metrics(result.scores["id"], result.scores["noise"]).auroc
    assert model.setting == ReconstructionSetting(levels=(100, 300))  # the given model is unchanged


def test_model_card_figures(tmp_path):
    curve = [{"step": 500 * i, "heldout_loss": 0.05 / i, "train_loss_smoothed": 0.06 / i} for i in (1, 2, 3)]
    loss_curve_png(tmp_path / "curve.png", curve)
    with Image.open(tmp_path / "curve.png") as picture:
        assert picture.size == (560, 320)
    torch.manual_seed(0)
    samples = sample_images(build_unet(TINY), TINY, 10, steps=3)
    assert samples.shape == (10, 1, 28, 28) and samples.abs().max() <= 1
    image_grid_png(tmp_path / "grid.png", samples, columns=5, scale=2)
    with Image.open(tmp_path / "grid.png") as picture:
        assert picture.size == (2 * (5 * 30 + 2), 2 * (2 * 30 + 2)) and picture.mode == "L"
    with pytest.raises(ValueError, match="empty"):
        loss_curve_png(tmp_path / "x.png", [])
    json.dumps(curve)  # the curve is stored as JSON beside the PNG


def test_labelled_images_infers_shape_and_keeps_chosen_classes(tmp_path):
    for name, colour in (("red", (200, 0, 0)), ("blue", (0, 0, 200)), ("green", (0, 150, 0))):
        (tmp_path / name).mkdir()
        for index in range(3):
            Image.new("RGB", (20, 20 + index), colour).save(tmp_path / name / f"{index}.png")
    images, labels, classes, shape = labelled_images(f"folder:{tmp_path}", keep_classes=[2, 0])
    assert shape == (3, 20) and images.shape == (6, 3, 20, 20) and images.min() >= -1 and images.max() <= 1
    assert classes == ("red", "blue") and sorted(labels.tolist()) == [0, 0, 0, 1, 1, 1]
    assert infer_image_shape([Image.new("L", (28, 28), 7).convert("RGB")]) == (1, 28)
    assert infer_image_shape([Image.new("RGB", (300, 400), (1, 2, 3))]) == (3, 64)
    with pytest.raises(ConfigError, match="at least two distinct classes"):
        labelled_images(f"folder:{tmp_path}", keep_classes=[1])


def test_a_pixel_baseline_trains_on_rgb_images_and_writes_its_card(tmp_path):
    """The generic entry point (used for a user's own folder): channels and size come from the images."""
    from dlsr_core.baselines.pixel_ddpm import PixelDDPMConfig

    generator = torch.Generator().manual_seed(0)
    images = torch.rand(24, 3, 8, 8, generator=generator) * 2 - 1
    record = TrainingData("folder:/my/images", None, 16)
    data = pixel_training.PixelData(images[:16], images[16:20], images[20:], record, record, record)
    config = PixelDDPMConfig(image_size=8, channels=3, block_out_channels=(8, 8, 8), norm_num_groups=4)
    train = pixel_training.PixelTrainConfig(batch_size=4, eval_every=2, max_steps=4)
    lines = []
    out, run = tmp_path / "out", tmp_path / "run"
    model = pixel_training.train_pixel_baseline(data, out, run, config, train, log=lines.append)
    assert model.info.steps_done == 4 and model.info.stopped == "max_steps" and len(lines) == 2
    loaded = PixelDDPM.load(tmp_path / "out" / "pixel_ddpm.safetensors")
    assert loaded.config.channels == 3 and loaded.info.training_set == record
    gray = images[20:, :1]  # a grayscale tensor is adapted to the RGB model
    np.testing.assert_array_equal(loaded.score_pixels(gray), loaded.score_pixels(gray.expand(-1, 3, -1, -1)))
    np.testing.assert_allclose(loaded.score_pixels(gray), model.score_pixels(gray), atol=2e-3)  # float16 weights
    # the stored normalisation is reproduced exactly by recalibrating the saved file on its calibration images
    again = loaded.with_setting(loaded.setting, images[20:])
    assert torch.equal(again.id_mean, loaded.id_mean) and torch.equal(again.id_std, loaded.id_std)
    assert again.id_threshold95 == loaded.id_threshold95
    with Image.open(tmp_path / "out" / "pixel_ddpm_samples.png") as picture:
        assert picture.mode == "RGB"
    curve = json.loads((tmp_path / "out" / "pixel_ddpm_curve.json").read_text())
    assert [point["step"] for point in curve] == [2, 4]
