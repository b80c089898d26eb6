"""Named presets: `paper` (the paper's equations, our default) and `official` (the authors' released code).

The released implementation (github.com/xbyym/DLSR) differs from the paper's equations in a handful of places
(listed in the README's "paper vs released code" table). Every difference is one field below, so each can be switched
on alone; a preset is just a complete set of values. Feature options change the cached features (they are part of the
cache key), architecture options change the LFDN (they live in LFDNConfig), scoring options change how a trained model
scores (sampler, MFsim stages, default timestep), test-time options how its networks run at scoring time (fp16
autocast, LR's noise) and training options are the optimiser settings. Test-time options are not stored in checkpoints:
they follow the preset a checkpoint was trained under, unless `score`/`evaluate` are told otherwise.

All fields are plain str/int/float/bool so they can be stored flat in checkpoint metadata.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from dlsr_core.diffusion import SAMPLERS, ConfigError

POOLINGS = ("gap", "stride16-grid")
RESIZES = ("model", "bilinear")
NORMALIZATIONS = ("model", "imagenet")
SAME_PADDINGS = ("dynamic", "static-native")
INPUT_ACTIVATIONS = ("none", "silu")
TIME_MLP_WIDTHS = ("width", "features")  # or a positive integer
MFSIM_STAGES = ("all", "without-first")
LR_NOISES = ("shared", "separate")


@dataclass(frozen=True)
class FeatureOptions:
    """How images become feature vectors (part of the feature cache key).

    pooling: "gap" pools every stage map directly; "stride16-grid" first resamples every stage map to the stride-16
        grid (bilinear, align_corners=True), then pools. std_eps: added to the per-stage (unbiased) std.
    resize: "model" uses the backbone's own resize filter (timm data config), "bilinear" a bilinear resize.
    normalization: "model" uses the backbone's own mean/std, "imagenet" the ImageNet mean/std.
    same_padding: "dynamic" pads TF-"same" convolutions for the actual input size (timm); "static-native" fixes that
        padding for the backbone's native resolution (380 px for EfficientNet-B4), as EfficientNet ports with a
        static image size do.
    """

    pooling: str = "gap"
    std_eps: float = 1e-6
    resize: str = "model"
    normalization: str = "model"
    same_padding: str = "dynamic"


@dataclass(frozen=True)
class ArchitectureOptions:
    """LFDN architecture choices. time_mlp_width: "width" (the LFDN width), "features" (the feature size), or N."""

    input_activation: str = "none"
    time_mlp_width: str = "width"


@dataclass(frozen=True)
class ScoringOptions:
    """How a trained model scores: the sampler, which stages MFsim averages, and the default start timestep."""

    sampler: str = "ddim"
    mfsim_stages: str = "all"
    timestep: int = 5


@dataclass(frozen=True)
class TestTimeOptions:
    """How the LFDN runs when it scores.

    autocast: run the reconstruction under fp16 autocast (the released test scripts do, on their GPU; on CPU it
        emulates that rounding, more slowly). lr_noise: "shared" gives the early and the final checkpoint the same
        noise for LR (their difference is then free of noise-draw variance); "separate" draws it independently for
        each, as the released LR script does.
    """

    __test__ = False  # a name pytest would otherwise try to collect as a test class

    autocast: bool = False
    lr_noise: str = "shared"


@dataclass(frozen=True)
class TrainingOptions:
    """Optimiser settings. amp: fp16 autocast on CUDA (no effect elsewhere); drop_last: drop each epoch's last
    partial batch."""

    epochs: int = 20
    batch_size: int = 256
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    amp: bool = False
    drop_last: bool = False


@dataclass(frozen=True)
class Preset:
    """A complete set of options under one name."""

    name: str
    features: FeatureOptions
    architecture: ArchitectureOptions
    scoring: ScoringOptions
    training: TrainingOptions
    test_time: TestTimeOptions = TestTimeOptions()


# The paper preset's options, as module-level values for use as argument defaults.
DEFAULT_FEATURES = FeatureOptions()
DEFAULT_SCORING = ScoringOptions()
DEFAULT_TEST_TIME = TestTimeOptions()

PRESETS: dict[str, Preset] = {
    "paper": Preset("paper", FeatureOptions(), ArchitectureOptions(), ScoringOptions(), TrainingOptions()),
    "official": Preset(
        "official",
        FeatureOptions(
            pooling="stride16-grid",
            std_eps=1e-5,
            resize="bilinear",
            normalization="imagenet",
            same_padding="static-native",
        ),
        ArchitectureOptions(input_activation="silu", time_mlp_width="features"),
        # Their sampler starts at their level 3, which is our t = 4 (see diffusion.official_reconstruct).
        ScoringOptions(sampler="official", mfsim_stages="without-first", timestep=4),
        # The released training loop (engine.py) has no autocast; its test scripts have (test_time below).
        TrainingOptions(
            epochs=150,
            batch_size=256,
            learning_rate=1e-5,
            weight_decay=0.02,
            ema_decay=0.9999,
            amp=False,
            drop_last=True,
        ),
        # test_mse_mfsim.py / test_LR.py run under fp16 autocast; test_LR.py draws each checkpoint's noise anew.
        TestTimeOptions(autocast=True, lr_noise="separate"),
    ),
}
DEFAULT_PRESET = "paper"

_CHOICES: dict[str, tuple[str, ...]] = {
    "pooling": POOLINGS,
    "resize": RESIZES,
    "normalization": NORMALIZATIONS,
    "same_padding": SAME_PADDINGS,
    "input_activation": INPUT_ACTIVATIONS,
    "sampler": SAMPLERS,
    "mfsim_stages": MFSIM_STAGES,
    "lr_noise": LR_NOISES,
}


def preset_test_time(preset: str) -> TestTimeOptions:
    """The test-time options of the preset a checkpoint was trained under (the defaults for an unknown name)."""
    return PRESETS[preset].test_time if preset in PRESETS else DEFAULT_TEST_TIME


def get_preset(name: str) -> Preset:
    """The preset called `name`; ConfigError naming the choices otherwise."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def validate_options(options: Any) -> None:
    """Raise ConfigError when a field of an options dataclass has a value outside its choices or range."""
    for item in fields(options):
        value = getattr(options, item.name)
        if item.name in _CHOICES and value not in _CHOICES[item.name]:
            raise ConfigError(f"{item.name} must be one of {', '.join(_CHOICES[item.name])}, got {value!r}")
    if isinstance(options, FeatureOptions) and not 0 < options.std_eps < 1:
        raise ConfigError(f"std_eps must be in (0, 1), got {options.std_eps}")
    if isinstance(options, ArchitectureOptions) and options.time_mlp_width not in TIME_MLP_WIDTHS:
        if not options.time_mlp_width.isdigit() or int(options.time_mlp_width) < 1:
            raise ConfigError(
                f"time_mlp_width must be 'width', 'features' or a positive integer, got {options.time_mlp_width!r}"
            )
    if isinstance(options, ScoringOptions) and options.timestep < 1:
        raise ConfigError(f"timestep must be >= 1, got {options.timestep}")


def with_overrides(options: Any, **overrides: Any) -> Any:
    """`options` with every override that is not None applied, validated."""
    chosen = {name: value for name, value in overrides.items() if value is not None}
    result = replace(options, **chosen) if chosen else options
    validate_options(result)
    return result


def options_from(source: Any, kind: type) -> Any:
    """An options dataclass of type `kind` built from the same-named attributes of `source` (e.g. CheckpointInfo)."""
    return kind(**{item.name: getattr(source, item.name) for item in fields(kind) if hasattr(source, item.name)})


def time_embed_width(option: str, width: int, feature_dim: int) -> int:
    """LFDNConfig.time_embed_width for `option`: 0 (the LFDN width, as before presets existed) for "width", the
    feature size for "features", else the integer given."""
    if option == "width":
        return 0
    if option == "features":
        return feature_dim
    return int(option)


def feature_options_tag(options: FeatureOptions) -> str | None:
    """A stable text form of non-default feature options (for cache keys); None for the defaults."""
    if options == DEFAULT_FEATURES:
        return None
    return ",".join(f"{item.name}={getattr(options, item.name)!r}" for item in fields(options))


def differences_from_preset(name: str, *options: Any) -> list[str]:
    """Every field of the given options dataclasses that differs from preset `name`'s value, as "field=value"."""
    preset = get_preset(name)
    groups = (preset.features, preset.architecture, preset.scoring, preset.training, preset.test_time)
    reference = {type(group): group for group in groups}
    changed = []
    for group in options:
        base = reference[type(group)]
        changed += [
            f"{item.name}={getattr(group, item.name)}"
            for item in fields(group)
            if getattr(group, item.name) != getattr(base, item.name)
        ]
    return changed


def describe_preset(name: str, *options: Any) -> str:
    """`name`, followed by the options that differ from that preset's, e.g. "official (changed: sampler=ddim)"."""
    if name not in PRESETS:
        return name
    changed = differences_from_preset(name, *options)
    return f"{name} (changed: {', '.join(changed)})" if changed else name
