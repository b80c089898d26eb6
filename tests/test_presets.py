"""The `official` preset: each of its items against a hand computation, and presets end to end through the CLI."""

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from dlsr_core import explorer
from dlsr_core.backbones import pool_and_standardize, static_same_padding
from dlsr_core.cache import cache_key
from dlsr_core.diffusion import LFDN, ConfigError, LFDNConfig, NoiseSchedule, official_reconstruct, reconstruct
from dlsr_core.noise import keyed_standard_normal, row_noise_keys
from dlsr_core.presets import (
    PRESETS,
    ArchitectureOptions,
    FeatureOptions,
    ScoringOptions,
    differences_from_preset,
    get_preset,
    time_embed_width,
    with_overrides,
)
from dlsr_core.scoring import mfsim_from_stage_cosines


class ScaledIdentity(torch.nn.Module):
    """A known denoiser: predicts x0 = z / (1 + t) at our timestep t."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, z, timesteps):
        self.calls.append(int(timesteps[0]))
        return z / (1.0 + timesteps.float()[:, None])


def test_official_sampler_matches_a_hand_computed_trajectory():
    config = LFDNConfig(feature_dim=6, width=8, depth=1)
    schedule = NoiseSchedule(config)
    z0 = torch.tensor([[0.5, -1.0, 2.0, 0.0, 1.5, -0.25], [1.0, 1.0, -2.0, 0.5, 0.0, 3.0]])
    network = ScaledIdentity()
    ours = official_reconstruct(network, schedule, z0, start=4, eta=1.0, seed=7)

    # The released code's levels, 0-indexed: abar[k] = prod_{i<=k} (1 - beta_i); the network at level k is our t=k+1.
    betas = np.linspace(math.sqrt(0.0015), math.sqrt(0.0195), 100) ** 2
    abar = np.cumprod(1.0 - betas)
    keys = row_noise_keys(z0, 7)
    noise = [keyed_standard_normal(keys, stream, 6).double().numpy() for stream in range(3)]
    x0 = z0.double().numpy()
    z = math.sqrt(abar[3]) * x0 + math.sqrt(1 - abar[3]) * noise[0]  # q_sample at level 3
    for number, level in enumerate((3, 2, 1), start=1):  # DDIM timesteps [1, 2, 3] visited in reverse
        predicted = z / (1.0 + (level + 1))
        eps = (z - math.sqrt(abar[level]) * predicted) / math.sqrt(1 - abar[level])  # at the network's level
        a_t, a_prev = abar[level - 1], abar[max(level - 2, 0)]  # one level lower; the last step uses level 0 twice
        x0_again = (z - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
        sigma = math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
        step_noise = noise[number] if number < 3 else 0.0  # sigma is 0 in the last step
        z = math.sqrt(a_prev) * x0_again + math.sqrt(1 - a_prev - sigma**2) * eps + sigma * step_noise
    np.testing.assert_allclose(ours.double().numpy(), z, rtol=1e-5, atol=1e-6)
    assert network.calls == [4, 3]  # two network passes; the identity step is skipped
    # the result is the noisy state, not an x0 prediction
    assert not torch.allclose(ours, network(ours, torch.full((2,), 2)))


def test_official_sampler_noise_is_keyed_by_row_and_draw():
    config = LFDNConfig(feature_dim=5, width=8, depth=1)
    model, schedule = LFDN(config).eval(), NoiseSchedule(config)
    z0 = torch.randn(70, 5, generator=torch.Generator().manual_seed(0))
    whole = reconstruct(model, schedule, z0, 4, sampler="official")
    alone = reconstruct(model, schedule, z0[33:34], 4, sampler="official")
    torch.testing.assert_close(whole[33:34], alone, rtol=0, atol=0)
    other_draw = official_reconstruct(model, schedule, z0[:3], 4, draw=1)
    assert not torch.allclose(other_draw, whole[:3])
    with pytest.raises(ConfigError, match="sampler"):
        reconstruct(model, schedule, z0, 4, sampler="bogus")


def test_stride16_grid_pooling_of_a_two_stage_map_equals_hand_value():
    stride8 = torch.arange(3 * 16, dtype=torch.float32).reshape(1, 3, 4, 4) ** 1.5  # (B, C, H, W), stride 8
    stride32 = torch.tensor([3.0, -1.0, 0.5]).reshape(1, 3, 1, 1)  # stride 32: a 1x1 map
    features = pool_and_standardize([stride8, stride32], eps=1e-5, pooling="stride16-grid", reductions=(8, 32))
    # The stride-16 grid is 2x2; bilinear with align_corners=True samples a 4x4 map at its four corners exactly,
    # and a 1x1 map upsampled is constant.
    maps = stride8[0].numpy()
    corners = [(maps[c, 0, 0] + maps[c, 0, 3] + maps[c, 3, 0] + maps[c, 3, 3]) / 4 for c in range(3)]
    expected_first = (np.array(corners) - np.mean(corners)) / (np.std(corners, ddof=1) + 1e-5)
    values = np.array([3.0, -1.0, 0.5])
    expected_second = (values - values.mean()) / (values.std(ddof=1) + 1e-5)
    np.testing.assert_allclose(features[0].numpy(), np.concatenate([expected_first, expected_second]), rtol=1e-5)
    # plain pooling averages all 16 values of the stride-8 map instead, which is a different vector
    plain = pool_and_standardize([stride8, stride32], eps=1e-5)
    assert not torch.allclose(plain[0, :3], features[0, :3], atol=1e-3)


def test_stride16_grid_is_the_stride16_maps_size():
    maps = [torch.rand(2, 3, 8, 8), torch.rand(2, 4, 3, 3), torch.rand(2, 5, 2, 2)]
    pooled = pool_and_standardize(maps, pooling="stride16-grid", reductions=(4, 16, 32))
    assert pooled.shape == (2, 12)
    # the stride-16 map is already on the grid: its pooled values are its plain means
    torch.testing.assert_close(pooled[:, 3:7], pool_and_standardize([maps[1]])[:, :], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="stride"):
        pool_and_standardize(maps, pooling="stride16-grid")


def test_static_same_padding_known_values():
    # EfficientNet-B4's stage-3 stride-2 5x5 convolution: input 95 px at 380-px images, 56 px at 224-px images.
    assert static_same_padding((95, 95), (5, 5), (2, 2), (1, 1)) == (2, 2, 2, 2)
    assert static_same_padding((56, 56), (5, 5), (2, 2), (1, 1)) == (1, 2, 1, 2)
    assert static_same_padding((380, 224), (3, 3), (2, 2), (1, 1)) == (0, 1, 0, 1)
    assert static_same_padding((7, 7), (3, 3), (1, 1), (1, 1)) == (1, 1, 1, 1)


def test_b4_static_padding_is_fixed_for_380_px():
    from dlsr_core.backbones import create_feature_extractor

    official = create_feature_extractor("efficientnet_b4", "random", "cpu", PRESETS["official"].features)
    padding = {
        name: module.static_padding
        for name, module in official.model.named_modules()
        if "static_padding" in dir(module)
    }
    assert padding["blocks.2.0.conv_dw"] == (2, 2, 2, 2)  # the dynamic padding at 224 px would be (1, 2, 1, 2)
    assert padding["conv_stem"] == (0, 1, 0, 1)
    assert official.mean == (0.485, 0.456, 0.406) and official.interpolation == "bilinear"


def test_switching_presets_changes_the_cache_key():
    paper = cache_key("data", "efficientnet_b4", "hub", 224, PRESETS["paper"].features)
    official = cache_key("data", "efficientnet_b4", "hub", 224, PRESETS["official"].features)
    one_item = cache_key("data", "efficientnet_b4", "hub", 224, FeatureOptions(std_eps=1e-5))
    assert len({str(paper), str(official), str(one_item)}) == 3
    assert paper == cache_key("data", "efficientnet_b4", "hub", 224)  # keys made before presets stay valid


def test_input_activation_and_time_mlp_width():
    torch.manual_seed(0)
    plain = LFDN(LFDNConfig(feature_dim=6, width=8, depth=2))
    activated = LFDN(LFDNConfig(feature_dim=6, width=8, depth=2, input_activation="silu"))
    torch.nn.init.normal_(plain.output_projection.weight)  # zero-initialised otherwise: the output would be 0
    activated.load_state_dict(plain.state_dict())  # no new parameters: old checkpoints keep their keys
    z, timesteps = torch.randn(4, 6), torch.tensor([1, 2, 3, 4])
    torch.testing.assert_close(activated(z, timesteps), plain(torch.nn.functional.silu(z), timesteps))

    narrow = LFDN(LFDNConfig(feature_dim=6, width=8, depth=2, time_embed_width=6))
    assert narrow.time_mlp[0].weight.shape == (6, 8) and narrow.time_mlp[2].weight.shape == (6, 6)
    assert narrow.blocks[1].time_projection.weight.shape == (8, 6)
    assert narrow(z, timesteps).shape == (4, 6)
    assert time_embed_width("features", 1440, 720) == 720 and time_embed_width("width", 1440, 720) == 0
    assert time_embed_width("96", 1440, 720) == 96


def test_mfsim_without_first_stage():
    cosines = torch.tensor([[0.1, 0.5, 0.9], [1.0, 0.0, 0.2]])
    torch.testing.assert_close(mfsim_from_stage_cosines(cosines), torch.tensor([-0.5, -0.4]))
    torch.testing.assert_close(mfsim_from_stage_cosines(cosines, "without-first"), torch.tensor([-0.7, -0.1]))


def test_overrides_and_validation():
    official = get_preset("official")
    changed = with_overrides(official.scoring, sampler="ddim", timestep=None)
    assert changed == ScoringOptions(sampler="ddim", mfsim_stages="without-first", timestep=4)
    assert differences_from_preset("official", official.features, changed) == ["sampler=ddim"]
    with pytest.raises(ConfigError, match="pooling"):
        with_overrides(FeatureOptions(), pooling="max")
    with pytest.raises(ConfigError, match="time_mlp_width"):
        with_overrides(ArchitectureOptions(), time_mlp_width="wide")
    with pytest.raises(ConfigError, match="official"):
        get_preset("paperish")


def test_shipped_checkpoint_reads_as_the_paper_preset(detector, run_dir):
    assert detector.preset == "paper" and explorer.summarize(detector, run_dir).preset == "paper"
    assert detector.feature_options == FeatureOptions()
    assert detector.scoring == ScoringOptions()
    assert detector.info.config.input_activation == "none" and detector.info.config.time_embed_width == 0


def _read_scores(path) -> dict[str, np.ndarray]:
    with open(path, newline="") as stream:
        rows = list(csv.DictReader(stream))
    return {name: np.array([float(row[name]) for row in rows]) for name in rows[0] if name != "item"}


def test_cli_trains_and_scores_under_the_official_preset(tmp_path, capsys, monkeypatch):
    from dlsr_core.cli import main
    from dlsr_core.scoring import Detector

    run = tmp_path / "run"
    common = ["--cache-dir", str(tmp_path / "cache"), "--quiet"]
    train = ["train", "-d", "demo:textures", "--out", str(run), "--weights", "random", "--input-size", "32"]
    code = main([*train, *common, "--width", "32", "--depth", "1", "--preset", "official", "--epochs", "2"])
    assert code == 0, capsys.readouterr().err
    detector = Detector.load(run, device="cpu")
    info = detector.info
    assert explorer.summarize(detector, run).preset == "official"  # what the app's Home page shows
    changed = detector.with_scoring(ScoringOptions(sampler="ddim", mfsim_stages="without-first", timestep=4))
    assert explorer.summarize(changed, run).preset == "official (changed: sampler=ddim)"
    assert (info.preset, info.pooling, info.std_eps, info.resize, info.normalization) == (
        "official",
        "stride16-grid",
        1e-5,
        "bilinear",
        "imagenet",
    )
    assert (info.sampler, info.mfsim_stages, info.timestep) == ("official", "without-first", 4)
    assert info.config.input_activation == "silu" and info.config.time_embed_width == info.config.feature_dim
    settings = info.train_settings
    assert (settings["epochs"], settings["learning_rate"], settings["weight_decay"]) == (2, 1e-5, 0.02)
    assert settings["ema_decay"] == 0.9999 and not settings["amp"] and settings["drop_last"]  # no autocast in training

    score = ["score", "-d", "demo:textures", "--checkpoint", str(run), *common]
    assert main([*score, "-o", str(tmp_path / "official.csv")]) == 0
    assert main([*score, "--preset", "paper", "-o", str(tmp_path / "paper.csv")]) == 0
    assert (
        main([*score, "--sampler", "ddim", "-t", "4", "--mfsim-stages", "all", "-o", str(tmp_path / "ddim.csv")]) == 0
    )
    official, paper, ddim = (_read_scores(tmp_path / f"{name}.csv") for name in ("official", "paper", "ddim"))
    assert not np.allclose(official["mse"], ddim["mse"])  # the sampler changes the scores
    np.testing.assert_allclose(ddim["mfsim"], -np.mean([ddim[f"cos_stage{i}"] for i in range(1, 6)], axis=0), atol=1e-4)
    np.testing.assert_allclose(
        official["mfsim"], -np.mean([official[f"cos_stage{i}"] for i in range(2, 6)], axis=0), atol=1e-4
    )
    assert len(paper) == len(official)
    assert main([*score, "-t", "2"]) == 2 and "at least 3 with --sampler official" in capsys.readouterr().err

    # The app opens such a model at its own timestep (4), never below the sampler's first network step, with the
    # steps control (which this sampler ignores) disabled.
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("DLSR_RUN_DIR", str(run))
    app = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app.py"), default_timeout=240)
    app.run()
    app.switch_page("pages/score_images.py").run()
    assert not app.exception, [e.value for e in app.exception]
    timestep, steps = app.slider(key="timestep"), app.slider(key="steps")
    assert (timestep.value, timestep.min, steps.disabled) == (4, 3, True)
