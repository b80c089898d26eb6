"""Damaged, crafted and inconsistent baseline files (pixel DDPM, feature autoencoder, classifier): each is refused
with one line naming the file and the problem, before any model is built; the other baselines keep working, and the
pages and the benchmark list the damaged one as unavailable instead of crashing.

Most cases keep the file's digests consistent (the embedded one and the `.sha256` file), as a careless tool or a
crafted file would: only the checks on what the file *says* can catch them.
"""

from __future__ import annotations

import json
import shutil
import tracemalloc
from pathlib import Path

import pytest
import safetensors
import safetensors.torch
import torch
from conftest import REPO
from test_rel_checkpoints import _read, _write, metadata_edit  # the same file surgery as for LFDN checkpoints

from dlsr_core.baselines import classifier, feature_ae, pixel_ddpm
from dlsr_core.baselines.cnn import CNNConfig, CNNTrainConfig, train_cnn
from dlsr_core.baselines.store import MAX_FILE_BYTES, BaselineFileError
from dlsr_core.checkpoint import checksum_path
from dlsr_core.comparison import Baselines
from dlsr_core.validation import TrainingData

KINDS = ("pixel_ddpm", "feature_ae", "classifier")
LOADERS = {
    "pixel_ddpm": pixel_ddpm.PixelDDPM.load,
    "feature_ae": feature_ae.FeatureAEBaseline.load,
    "classifier": classifier.ClassifierBaselines.load,
}
DATA = TrainingData("fashion_mnist:train", "i % 12 != 11", 40)


@pytest.fixture(scope="session")
def good_baselines(tmp_path_factory) -> Path:
    """One small, valid file of each kind, written by the real save functions."""
    folder = tmp_path_factory.mktemp("good_baselines")
    generator = torch.Generator().manual_seed(0)
    pixels = torch.rand(8, 1, 28, 28, generator=generator) * 2 - 1
    config = pixel_ddpm.PixelDDPMConfig(block_out_channels=(8, 8, 8), norm_num_groups=4)
    torch.manual_seed(0)
    setting = pixel_ddpm.ReconstructionSetting(levels=(100, 300))
    record = pixel_ddpm.PixelRecord(training_set=DATA, train_seconds=1.0)
    unet = pixel_ddpm.build_unet(config)
    pixel_ddpm.PixelDDPM.calibrated(unet, config, setting, pixels, record).save(folder / "pixel_ddpm.safetensors")
    features = torch.randn(60, 40, generator=generator)
    ae_record = feature_ae.AutoencoderRecord(training_set=DATA, backbone="efficientnet_lite0", stage_dims=(16, 24))
    model = feature_ae.train_feature_ae(
        features, feature_ae.AutoencoderConfig(40, 16, 4), feature_ae.AutoencoderTrainConfig(epochs=1), ae_record
    )
    model.save(folder / "feature_ae.safetensors")
    images = torch.rand(40, 1, 8, 8, generator=generator) * 2 - 1
    labels = torch.arange(40) % 4
    net, _ = train_cnn(images, labels, CNNConfig(4, image_size=8, widths=(4, 8)), CNNTrainConfig(epochs=1))
    info = classifier.ClassifierRecord(training_set=DATA, classes=("a", "b", "c", "d"), train_seconds=1.0)
    fitted = classifier.ClassifierBaselines.fit(net, images, labels, classifier.DetectorSettings(vim_dim=4), info)
    fitted.save(folder / "classifier.safetensors")
    return folder


def drop_metadata(key):
    def edit(path):
        tensors, metadata = _read(path)
        del metadata[key]
        _write(path, tensors, metadata)

    return edit


def json_edit(key, change, redigest=True):
    """Change the parsed `config` or `info` object in place, then store it back."""

    def edit(path):
        tensors, metadata = _read(path)
        value = json.loads(metadata[key])
        change(value)
        metadata[key] = json.dumps(value)
        _write(path, tensors, metadata, redigest)

    return edit


def text_edit(key, old, new):
    def edit(path):
        tensors, metadata = _read(path)
        assert old in metadata[key], (old, metadata[key])
        metadata[key] = metadata[key].replace(old, new, 1)
        _write(path, tensors, metadata)

    return edit


def tensor_edit(change):
    def edit(path):
        tensors, metadata = _read(path)
        change(tensors)
        _write(path, tensors, metadata)

    return edit


def raw_bytes(transform, keep_checksum_file=False):
    def edit(path):
        path.write_bytes(transform(path.read_bytes()))
        if not keep_checksum_file:
            checksum_path(path).unlink(missing_ok=True)

    return edit


def flip_last_byte(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 0x40])


def oversized(path):
    with path.open("r+b") as stream:
        stream.truncate(MAX_FILE_BYTES + 1)  # sparse: no real disk use


def set_value(name, value):
    def change(tensors):
        tensors[name] = tensors[name].clone()
        tensors[name].view(-1)[0] = value

    return change


def reshape(name, shape):
    def change(tensors):
        tensors[name] = torch.zeros(shape, dtype=tensors[name].dtype)

    return change


def model_edit(**changes):
    return json_edit("config", lambda config: config["model"].update(changes))


def cnn_edit(**changes):
    return json_edit("config", lambda config: config["cnn"].update(changes))


def settings_edit(**changes):
    return json_edit("config", lambda config: config["settings"].update(changes))


# kind -> case -> (damage, text the one-line message must contain)
PIXEL = {
    "config-not-json": (metadata_edit(config="{this is not json"), "'config' metadata is not JSON"),
    "config-missing": (drop_metadata("config"), "has no 'config'"),
    "info-not-json": (metadata_edit(info="[1, 2"), "'info' metadata is not JSON"),
    "info-is-a-list": (metadata_edit(info="[1, 2, 3]"), "info must be a JSON object"),
    "info-unknown-key": (json_edit("info", lambda info: info.update(colour="blue")), "unknown key(s) 'colour'"),
    "config-unknown-key": (model_edit(colour="blue"), "unknown key(s) 'colour'"),
    "metadata-extra-key": (metadata_edit(note="hi"), "unknown metadata key(s) 'note'"),
    "image-size-zero": (model_edit(image_size=0), "image_size = 0 is outside"),
    "image-size-string": (model_edit(image_size="28"), "image_size must be an integer"),
    "image-size-not-divisible": (model_edit(image_size=30), "must be divisible by 4"),
    "attention-as-number": (model_edit(attention_at_lowest=1), "must be true or false"),
    "level-beyond-schedule": (json_edit("config", lambda c: c["setting"].update(levels=[1000])), "noise level 1000"),
    "stride-not-dividing": (json_edit("config", lambda c: c["setting"].update(stride=7)), "not a multiple"),
    "threshold-nan": (text_edit("config", '"id_threshold95": ', '"id_threshold95": NaN, "x": '), "NaN"),
    "threshold-string": (json_edit("config", lambda c: c.update(id_threshold95="1.6")), "must be a finite number"),
    "betas-reversed": (model_edit(beta_start=0.05), "must be below beta_end"),
    "norm-groups-not-dividing": (model_edit(norm_num_groups=3), "must divide every width"),
    "bomb-2048-channels": (model_edit(block_out_channels=[2048] * 3), "outside its valid range"),
    "bomb-1024-channels": (model_edit(block_out_channels=[1024] * 3), "no tensor in the file is that large"),
    "bomb-many-levels": (model_edit(block_out_channels=[8] * 9), "1 to 6 entries"),
    "bomb-layers-per-block": (model_edit(layers_per_block=8), "do not fit the stored config"),
    "stats-wrong-shape": (tensor_edit(reshape("stats.id_mean", (3,))), "stats.id_mean is [3]"),
    "unet-wrong-shape": (tensor_edit(reshape("unet.conv_in.weight", (8, 1, 5, 5))), "unet.conv_in.weight is"),
    "tensor-missing": (tensor_edit(lambda t: t.pop("unet.conv_out.bias")), "1 tensor(s) missing"),
    "tensor-extra": (tensor_edit(lambda t: t.update(extra=torch.zeros(2))), "unexpected tensor(s), e.g. extra"),
    "nan-weights-valid-digest": (tensor_edit(set_value("unet.conv_in.weight", float("nan"))), "NaN/Inf"),
    "inf-stats": (tensor_edit(set_value("stats.id_mean", float("inf"))), "NaN/Inf"),
    "std-zero": (tensor_edit(set_value("stats.id_std", 0.0)), "stats.id_std must be positive"),
    "format-version-old": (metadata_edit(format_version="1"), "format version '1'"),
    "format-version-garbage": (metadata_edit(format_version="2.0"), "format version '2.0'"),
    "kind-other": (metadata_edit(kind="classifier"), "is not a pixel_ddpm baseline"),
    "format-other": (metadata_edit(format="some-other-model"), "is not a pixel_ddpm baseline"),
    "bit-flip-with-checksum-file": (raw_bytes(flip_last_byte, keep_checksum_file=True), "checksum file"),
    "bit-flip-embedded-digest": (raw_bytes(flip_last_byte), "digest stored inside"),
    "edited-without-new-digest": (json_edit("info", lambda i: i.update(train_seconds=9.0), False), "stored inside"),
    "truncated-half": (raw_bytes(lambda data: data[: len(data) // 2]), "damaged"),
    "empty-file": (raw_bytes(lambda data: b""), "damaged"),
    "header-length-garbage": (raw_bytes(lambda data: b"\xff" * 8 + data[8:]), "damaged"),
    "header-not-json": (raw_bytes(lambda data: (4).to_bytes(8, "little") + b"{{{{" + data[12:]), "damaged"),
    "text-file": (raw_bytes(lambda data: b"just some text, not weights\n"), "damaged"),
    "oversized-file": (oversized, "above the"),
    "missing-file": (lambda path: path.unlink(), "no pixel_ddpm baseline at"),
}
CLASSIFIER = {
    "react-threshold-nan": (text_edit("config", '"react_threshold": ', '"react_threshold": NaN, "x": '), "NaN"),
    "react-threshold-negative": (json_edit("config", lambda c: c.update(react_threshold=-1.0)), "outside"),
    "vim-alpha-string": (json_edit("config", lambda c: c.update(vim_alpha="big")), "must be a finite number"),
    "vim-principal-wrong-shape": (tensor_edit(reshape("vim.principal", (8, 6))), "vim.principal is [8, 6]"),
    "vim-principal-1280x2000": (tensor_edit(reshape("vim.principal", (1280, 2000))), "vim.principal is"),
    "vim-principal-not-orthonormal": (tensor_edit(lambda t: t["vim.principal"].mul_(2)), "orthonormal"),
    "vim-dim-too-large": (settings_edit(vim_dim=8), "below the feature size 8"),
    "dice-p-one": (settings_edit(dice_p=1.0), "dice_p = 1.0 is outside"),
    "settings-unknown-key": (settings_edit(odin_temperature=1000), "unknown key(s) 'odin_temperature'"),
    "dice-mean-nan": (tensor_edit(set_value("dice.mean_activation", float("nan"))), "NaN/Inf"),
    "dice-mean-negative": (tensor_edit(set_value("dice.mean_activation", -1.0)), "must be >= 0"),
    "dice-mean-wrong-shape": (tensor_edit(reshape("dice.mean_activation", (9,))), "dice.mean_activation is [9]"),
    "net-nan-valid-digest": (tensor_edit(set_value("net.head.weight", float("nan"))), "NaN/Inf"),
    "net-wrong-shape": (tensor_edit(reshape("net.head.weight", (4, 9))), "net.head.weight is [4, 9]"),
    "classes-count-mismatch": (json_edit("info", lambda i: i.update(classes=["a", "b"])), "names 2 classes"),
    "info-is-a-list": (metadata_edit(info="[]"), "info must be a JSON object"),
    "widths-bomb": (cnn_edit(widths=[4, 100_000]), "outside its valid range"),
    "num-classes-bomb": (cnn_edit(num_classes=9_000), "no tensor in the file is that large"),
    "image-size-zero": (cnn_edit(image_size=0), "image_size = 0 is outside"),
    "too-many-stages": (cnn_edit(widths=[4] * 7), "1 to 6 stages"),
    "config-missing": (drop_metadata("config"), "has no 'config'"),
    "kind-other": (metadata_edit(kind="pixel_ddpm"), "is not a classifier baseline"),
}
FEATURE_AE = {
    "hidden-bomb": (json_edit("config", lambda c: c.update(hidden=900_000)), "no tensor in the file is that large"),
    "feature-dim-other": (json_edit("config", lambda c: c.update(feature_dim=24)), "do not fit the stored config"),
    "feature-dim-bool": (json_edit("config", lambda c: c.update(feature_dim=True)), "must be an integer"),
    "stage-dims-do-not-sum": (json_edit("info", lambda i: i.update(stage_dims=[16, 25])), "do not sum"),
    "feature-options-unknown": (
        json_edit("info", lambda i: i.update(feature_options={"pooling": "gap", "dpi": 3})),
        "unknown key(s) 'dpi'",
    ),
    "training-set-a-string": (json_edit("info", lambda i: i.update(training_set="all")), "must be a JSON object"),
    "inf-weights": (tensor_edit(set_value("model.decoder.0.weight", float("inf"))), "NaN/Inf"),
    "info-is-a-list": (metadata_edit(info="[1]"), "info must be a JSON object"),
    "config-not-json": (metadata_edit(config="not json"), "'config' metadata is not JSON"),
    "truncated": (raw_bytes(lambda data: data[:-100]), "damaged"),
}
CORPUS = {"pixel_ddpm": PIXEL, "classifier": CLASSIFIER, "feature_ae": FEATURE_AE}
CASES = [(kind, case) for kind, cases in CORPUS.items() for case in cases]


def damaged_copy(good: Path, target: Path, kind: str, case: str) -> Path:
    shutil.copytree(good, target)
    damage, _ = CORPUS[kind][case]
    damage(target / f"{kind}.safetensors")
    return target


@pytest.mark.parametrize(("kind", "case"), CASES, ids=[f"{kind}:{case}" for kind, case in CASES])
def test_bad_baseline_file_is_refused_in_one_line_and_the_others_still_load(kind, case, good_baselines, tmp_path):
    folder = damaged_copy(good_baselines, tmp_path / "baselines", kind, case)
    _, needle = CORPUS[kind][case]
    path = folder / f"{kind}.safetensors"
    with pytest.raises(BaselineFileError) as refused:
        LOADERS[kind](path)
    message = str(refused.value)
    assert needle.lower() in message.lower(), message
    assert str(path) in message and "\n" not in message
    loaded = Baselines.load(folder)
    assert loaded.problems == {kind: message}
    assert getattr(loaded, kind) is None
    assert all(getattr(loaded, other) is not None for other in KINDS if other != kind)


@pytest.mark.parametrize(
    ("kind", "case", "builder"),
    [
        ("pixel_ddpm", "bomb-2048-channels", "build_unet"),
        ("pixel_ddpm", "bomb-1024-channels", "build_unet"),
        ("classifier", "num-classes-bomb", "build_cnn"),
        ("classifier", "widths-bomb", "build_cnn"),
    ],
)
def test_a_config_asking_for_a_huge_model_builds_nothing(kind, case, builder, good_baselines, tmp_path, monkeypatch):
    folder = damaged_copy(good_baselines, tmp_path / "baselines", kind, case)
    module = {"pixel_ddpm": pixel_ddpm, "classifier": classifier}[kind]
    monkeypatch.setattr(module, builder, lambda config: pytest.fail(f"a model was built for {config}"))
    tracemalloc.start()
    try:
        with pytest.raises(BaselineFileError, match="outside its valid range|no tensor in the file is that large"):
            LOADERS[kind](folder / f"{kind}.safetensors")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20e6, f"refusing the file allocated {peak / 1e6:.0f} MB"


def test_the_file_is_read_once_and_checked_in_memory(good_baselines, tmp_path, monkeypatch):
    """Header, digest and tensors come from one read: a file replaced meanwhile cannot mix two versions."""
    folder = tmp_path / "baselines"
    shutil.copytree(good_baselines, folder)
    path = folder / "pixel_ddpm.safetensors"
    opened = []
    original = Path.open

    def tracking_open(self, *args, **kwargs):
        if self == path:
            opened.append(args)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", tracking_open)
    monkeypatch.setattr(safetensors, "safe_open", lambda *a, **k: pytest.fail("the file was opened a second time"))
    pixel_ddpm.PixelDDPM.load(path)
    assert len(opened) == 1


def test_save_refuses_nan_and_writes_nothing(good_baselines, tmp_path):
    model = classifier.ClassifierBaselines.load(good_baselines / "classifier.safetensors")
    model.react_threshold = float("nan")
    with pytest.raises(BaselineFileError, match="NaN/Inf"):
        model.save(tmp_path / "classifier.safetensors")
    pixel = pixel_ddpm.PixelDDPM.load(good_baselines / "pixel_ddpm.safetensors")
    torch.nn.init.constant_(pixel.unet.conv_out.bias, float("inf"))
    with pytest.raises(BaselineFileError, match="unet.conv_out.bias holds NaN/Inf"):
        pixel.save(tmp_path / "pixel_ddpm.safetensors")
    assert not list(tmp_path.iterdir())


APP = str(REPO / "app.py")


def _app(page: str, baselines: Path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("DLSR_BASELINES_DIR", str(baselines))
    app = AppTest.from_file(APP, default_timeout=300)
    app.run()
    app.switch_page(page).run()
    return app


@pytest.mark.parametrize("case", ["config-not-json", "unet-wrong-shape", "image-size-zero", "bomb-2048-channels"])
def test_feature_vs_pixel_page_names_the_damaged_file_in_one_line(case, good_baselines, tmp_path, monkeypatch):
    folder = damaged_copy(good_baselines, tmp_path / "baselines", "pixel_ddpm", case)
    app = _app("pages/feature_vs_pixel.py", folder, monkeypatch)
    assert not app.exception, [e.value for e in app.exception]
    errors = [e.value for e in app.error]
    assert len(errors) == 1 and "pixel_ddpm.safetensors" in errors[0] and CORPUS["pixel_ddpm"][case][1] in errors[0]


def test_score_distributions_lists_damaged_baselines_and_keeps_working(good_baselines, tmp_path, monkeypatch):
    folder = damaged_copy(good_baselines, tmp_path / "baselines", "classifier", "info-is-a-list")
    metadata_edit(config="{")(folder / "pixel_ddpm.safetensors")
    app = _app("pages/distributions.py", folder, monkeypatch)
    app.toggle(key="distributions_compare").set_value(True).run()  # the comparison's models load when asked for
    assert not app.exception, [e.value for e in app.exception]
    captions = "\n".join(c.value for c in app.caption)
    assert "classifier.safetensors" in captions and "info must be a JSON object" in captions
    assert "pixel_ddpm.safetensors" in captions and app.dataframe  # the page's table is still there


def test_benchmark_lists_a_damaged_baseline_and_scores_the_rest(good_baselines, tmp_path):
    from benchmarks import compare

    folder = damaged_copy(good_baselines, tmp_path / "baselines", "classifier", "vim-principal-1280x2000")
    compare.main(
        ["--subset", "4", "--speed-images", "4", "--pixel-settings", "0", "--baselines", str(folder)]
        + ["--out", str(tmp_path / "out"), "--name", "damaged"]
    )
    summary = json.loads((tmp_path / "out" / "damaged.json").read_text())
    assert any("classifier.safetensors" in note and "vim.principal is" in note for note in summary["notes"])
    assert "msp" not in summary["methods"] and "mfsim" in summary["methods"]
