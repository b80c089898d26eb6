"""Why is this image flagged? Its layer profile: where each backbone stage's reconstruction falls among ID images.

DLSR is layer-wise: a flagged image is one whose features the diffusion model fails to rebuild at some semantic level.
A raw per-stage number says little on its own (the deep stages of every image, ID or not, reconstruct with a lower
cosine than the shallow ones), so each stage is placed in the distribution of that same stage over ID reference
images, scored the same way: a percentile ("worse than 99.7 % of ID images") and a z-score, against the ID 5-95 %
band. The quantity follows the chosen score: per-stage cosine for MFsim, per-stage squared error for MSE, per-stage
early-minus-final squared error for LR. A stage is coloured only when it leaves that band.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from torch import Tensor

from dlsr_core.explorer.scores import id_threshold95, percent_below, percent_text, score_matrix, verdict
from dlsr_core.scoring import DEFAULT_DRAWS, DEFAULT_STEPS, Detector

BAND_PERCENT = (5.0, 95.0)  # the ID range a stage must leave to be called unusual
# An image's stage values are averaged over at least this many noise draws before they are placed among the ID
# reference's (scored with the page's draws, as its score is). Measured on ID images over 5 seeds
# (benchmarks/profile_draws.py, median / 90th percentile of a stage's percentile range): 1 draw moved the noisiest
# stage (stage 1) by 14 / 30 points, 16 draws by 3.9 / 7.7, 32 by 2.7 / 5.6, 64 by 2.1 / 4.3; the other stages move
# less. The reference needs no more draws: 16 image draws against a 1-draw or a 16-draw reference were equally
# stable. 32 draws cost 32 passes of one vector per image (about 9 ms), nothing for the reference.
PROFILE_DRAWS = 32

# What a CNN stage encodes, by its place in the five-level feature pyramid (resolution 1/2 ... 1/32 of the input).
LEVEL_ROLES = ("edges/colour", "simple textures", "textures/patterns", "object parts", "high-level semantics")


@dataclass(frozen=True)
class StageName:
    """A backbone stage as students should read it: its number in the feature vector, its role, its channels."""

    number: int  # 1-based position in the feature vector (the CSV's stage columns)
    role: str
    channels: int

    @property
    def label(self) -> str:
        """E.g. 'stage 1 · edges/colour · 16 ch'."""
        return f"stage {self.number} · {self.role} · {self.channels} ch"

    @property
    def short(self) -> str:
        """E.g. 'stage 5 (high-level semantics)'."""
        return f"stage {self.number} ({self.role})"


# The stages (timm out_indices) each registered backbone keeps: backbones.BACKBONES[name].out_indices, written out
# here because importing the backbones package imports timm (about 2 s); tests/test_explanation.py checks they agree.
STAGE_LEVELS = {
    "efficientnet_b4": (0, 1, 2, 3, 4),
    "resnet50": (1, 2, 3),
    "efficientnet_lite0": (0, 1, 2, 3, 4),
    "efficientnet_lite1": (0, 1, 2, 3, 4),
    "efficientnet_lite2": (0, 1, 2, 3, 4),
}


def _feature_levels(backbone: str, count: int) -> tuple[int, ...]:
    """Pyramid level (0 = 1/2 resolution ... 4 = 1/32) of each of `count` stages of `backbone`."""
    levels = STAGE_LEVELS.get(backbone)
    if levels is not None and len(levels) == count:
        return tuple(min(int(level), len(LEVEL_ROLES) - 1) for level in levels)
    if count == 1:
        return (len(LEVEL_ROLES) - 1,)
    # An unregistered backbone: assume its stages span the pyramid from the first level to the last.
    return tuple(round(i * (len(LEVEL_ROLES) - 1) / (count - 1)) for i in range(count))


@lru_cache(maxsize=16)
def stage_names(backbone: str, stage_dims: tuple[int, ...]) -> tuple[StageName, ...]:
    """Names of the stages of `backbone` whose channel counts are `stage_dims` (lite0: 16/24/40/112/320)."""
    levels = _feature_levels(backbone, len(stage_dims))
    return tuple(
        StageName(number, LEVEL_ROLES[level], int(channels))
        for number, (level, channels) in enumerate(zip(levels, stage_dims, strict=True), 1)
    )


@dataclass(frozen=True)
class _Quantity:
    key: str  # field of ScoreResult / explorer.score_matrix holding (N, S) per-stage values
    label: str
    higher_is_worse: bool
    worse: tuple[str, str]  # verb phrase (one stage, several stages) for "less ID-like than"
    better: tuple[str, str]
    combined: str  # how the score combines the stages


_RECONSTRUCTS_WORSE = ("reconstructs worse than", "reconstruct worse than")
_RECONSTRUCTS_BETTER = ("reconstructs better than", "reconstruct better than")
QUANTITIES: dict[str, _Quantity] = {
    "mfsim": _Quantity(
        "stage_cos",
        "cosine(z₀, ẑ₀)",
        False,
        _RECONSTRUCTS_WORSE,
        _RECONSTRUCTS_BETTER,
        "MFsim averages the cosines of all stages",
    ),
    "mse": _Quantity(
        "stage_sq_error",
        "squared error",
        True,
        _RECONSTRUCTS_WORSE,
        _RECONSTRUCTS_BETTER,
        "MSE adds up the squared errors of all stages, so the stages with most channels weigh most",
    ),
    "lr": _Quantity(
        "stage_lr",
        "LR (early − final error)",
        True,
        ("gained more from training than",) * 2,
        ("gained less from training than",) * 2,
        "LR adds up the training gains of all stages",
    ),
}


def profile_draws(draws: int) -> int:
    """Noise draws behind a layer profile when the page scores with `draws` (the score keeps its own draws)."""
    return max(int(draws), PROFILE_DRAWS)


def profile_arrays(
    detector: Detector,
    features: Tensor,
    score: str,
    timestep: int,
    steps: int | None = DEFAULT_STEPS,
    draws: int = DEFAULT_DRAWS,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """score_arrays of images' features (M, D) averaged over profile_draws(draws) draws: what their layer profiles are
    computed from, on every page and in `score --explain`."""
    return score_matrix(detector, features, timestep, steps, seed, with_lr=score == "lr", draws=profile_draws(draws))


def stage_values(arrays: Mapping[str, np.ndarray | None], score: str) -> np.ndarray:
    """The per-stage quantity (N, S) that explains `score`, from a score_matrix-style mapping."""
    if score not in QUANTITIES:
        raise KeyError(f"no layer profile for score {score!r}; choose one of {', '.join(QUANTITIES)}")
    values = arrays.get(QUANTITIES[score].key)
    if values is None:
        raise KeyError(f"per-stage values {QUANTITIES[score].key!r} are missing (LR needs the early checkpoint)")
    return np.asarray(values, dtype=np.float64)


@dataclass(frozen=True)
class StageReference:
    """The ID reference distribution of one per-stage quantity.

    badness (R, S): the quantity oriented like the score (higher = less ID-like), each column sorted ascending.
    """

    score: str
    names: tuple[StageName, ...]
    badness: np.ndarray

    @property
    def size(self) -> int:
        return self.badness.shape[0]

    def band(self) -> tuple[np.ndarray, np.ndarray]:
        """The ID 5-95 % range per stage in the quantity's own units: (low (S,), high (S,)), low <= high."""
        low, high = np.percentile(self.badness, BAND_PERCENT, axis=0)
        return (low, high) if QUANTITIES[self.score].higher_is_worse else (-high, -low)


def _orient(values: np.ndarray, score: str) -> np.ndarray:
    return values if QUANTITIES[score].higher_is_worse else -values


def stage_reference(values: np.ndarray, score: str, names: Sequence[StageName]) -> StageReference:
    """Reference from the per-stage values (R, S) of ID images, e.g. stage_values(id_scores, score)."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or values.shape[0] == 0 or values.shape[1] != len(names):
        raise ValueError(f"need (R >= 1, {len(names)}) per-stage ID values, got shape {values.shape}")
    return StageReference(score, tuple(names), np.sort(_orient(values, score), axis=0))


@dataclass(frozen=True)
class LayerProfile:
    """One image's layer profile under one score.

    values (S,): the per-stage quantity in its own units; worse_than (S,): percent of ID reference images whose
    stage is more ID-like (ties count half); z_scores (S,): (badness - ID mean) / ID std, positive = less ID-like;
    band_low, band_high (S,): the ID 5-95 % range in the quantity's units; status: 'worse' / 'normal' / 'better'
    per stage ('worse' and 'better' lie outside the band).
    """

    score: str
    names: tuple[StageName, ...]
    values: np.ndarray
    worse_than: np.ndarray
    z_scores: np.ndarray
    band_low: np.ndarray
    band_high: np.ndarray
    status: tuple[str, ...]
    reference_size: int
    sentence: str

    @property
    def quantity(self) -> str:
        return QUANTITIES[self.score].label

    @property
    def comparison(self) -> str:
        """What the percentages say, in the words of the sentence: 'reconstructs worse than' (MFsim, MSE) or
        'gained more from training than' (LR)."""
        return QUANTITIES[self.score].worse[0]


def verdict_note(profile: LayerProfile, verdict: str) -> str:
    """A sentence for a verdict the profile seems to contradict ('' otherwise): an ID verdict beside stages outside
    the ID range, or an OOD verdict with every stage inside it. The score combines the stages; no single one decides."""
    how = QUANTITIES[profile.score].combined
    unusual = profile.status.count("worse")
    if verdict == "ID" and unusual:
        stages = "this stage" if unusual == 1 else f"these {unusual} stages"
        return (
            f"Still ID: {how}, and {stages} did not lift the score above the threshold — the other stages came back "
            "as well as in typical ID images."
        )
    if verdict == "OOD" and not unusual:
        return (
            f"Still OOD: no single stage leaves the ID range, but {how}, and together their small excesses lift the "
            "score above the threshold."
        )
    return ""


def worse_than_percent(reference: StageReference, values: np.ndarray) -> np.ndarray:
    """Percent of ID reference images each stage of each image is less ID-like than: (M, S) -> (M, S)."""
    badness = _orient(np.atleast_2d(np.asarray(values, dtype=np.float64)), reference.score)
    percent = np.empty_like(badness)
    for stage in range(badness.shape[1]):
        percent[:, stage] = percent_below(reference.badness[:, stage], badness[:, stage])
    return percent


def layer_profiles(reference: StageReference, values: np.ndarray) -> list[LayerProfile]:
    """Layer profiles of M images from their per-stage values (M, S) in the reference's quantity."""
    values = np.atleast_2d(np.asarray(values, dtype=np.float64))
    if values.shape[1] != len(reference.names):
        raise ValueError(f"values have {values.shape[1]} stages, the reference {len(reference.names)}")
    percent = worse_than_percent(reference, values)
    mean, std = reference.badness.mean(axis=0), reference.badness.std(axis=0)
    z_scores = (_orient(values, reference.score) - mean) / np.where(std > 0, std, 1.0)
    low, high = reference.band()
    profiles = []
    for row in range(values.shape[0]):
        status = tuple(
            "worse" if p > BAND_PERCENT[1] else "better" if p < BAND_PERCENT[0] else "normal" for p in percent[row]
        )
        profiles.append(
            LayerProfile(
                score=reference.score,
                names=reference.names,
                values=values[row],
                worse_than=percent[row],
                z_scores=z_scores[row],
                band_low=low,
                band_high=high,
                status=status,
                reference_size=reference.size,
                sentence=describe(reference.score, reference.names, percent[row], status, reference.size),
            )
        )
    return profiles


def image_profiles(
    detector: Detector,
    features: Tensor,
    reference: Mapping[str, np.ndarray],
    score: str,
    timestep: int,
    steps: int | None = DEFAULT_STEPS,
    draws: int = DEFAULT_DRAWS,
    seed: int = 0,
) -> list[LayerProfile]:
    """Layer profiles of images' features (M, D) under `score`, against `reference` (score_matrix of the ID reference
    features at the same setting): what Score images, the feature map's selection and the CLI show for an image."""
    names = stage_names(detector.backbone, tuple(detector.stage_dims))
    stages = stage_reference(stage_values(reference, score), score, names)
    profiled = profile_arrays(detector, features, score, timestep, steps, draws, seed)
    return layer_profiles(stages, stage_values(profiled, score))


def _share_of_id(percent: float, size: int) -> str:
    """'99.7 % of ID images', or 'all 2,000 ID images' when beyond every one of them."""
    return f"all {size:,} ID images" if percent >= 100.0 else f"{percent_text(percent)} % of ID images"


def _stage_list(numbers: Sequence[int]) -> str:
    """[1, 2, 4] -> 'stages 1–2 and 4'; [3] -> 'stage 3'."""
    runs: list[list[int]] = []
    for number in sorted(numbers):
        if runs and number == runs[-1][-1] + 1:
            runs[-1].append(number)
        else:
            runs.append([number])
    parts = [f"{run[0]}–{run[-1]}" if len(run) > 1 else f"{run[0]}" for run in runs]
    joined = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"{'stages' if len(numbers) > 1 else 'stage'} {joined}"


def _unusual_clause(
    stages: list[int], names: Sequence[StageName], percent: np.ndarray, verb: tuple[str, str], size: int
) -> str:
    """Stages (most unusual first) leaving the band on one side, e.g. 'stage 5 (high-level semantics) reconstructs
    worse than 99.7 % of ID images, and stages 3–4 also reconstruct worse than 96.2–98.0 %'."""
    texts = [_share_of_id(percent[i], size) for i in stages]
    if len(stages) > 1 and len(set(texts)) == 1:
        return f"{_stage_list([names[i].number for i in stages])} {verb[1]} {texts[0]}"
    clause = f"{names[stages[0]].short} {verb[0]} {texts[0]}"
    rest = stages[1:]
    if len(rest) == 1:
        clause += f", and {names[rest[0]].short} also {verb[0]} {_share_of_id(percent[rest[0]], size)}"
    elif rest:
        low, high = (percent_text(f(percent[rest])) for f in (np.min, np.max))
        span = f"{low} %" if low == high else f"{low}–{high} %"
        clause += f", and {_stage_list([names[i].number for i in rest])} also {verb[1]} {span}"
    return clause


def describe(
    score: str, names: Sequence[StageName], worse_than: np.ndarray, status: Sequence[str], reference_size: int
) -> str:
    """The layer profile in one sentence, e.g. 'Stage 5 (high-level semantics) reconstructs worse than 99.7 % of ID
    images; stages 1–4 look normal.'"""
    quantity = QUANTITIES[score]
    worse_than = np.asarray(worse_than, dtype=np.float64)
    worse = sorted((i for i, s in enumerate(status) if s == "worse"), key=lambda i: -worse_than[i])
    better = sorted((i for i, s in enumerate(status) if s == "better"), key=lambda i: worse_than[i])
    normal = [names[i].number for i, s in enumerate(status) if s == "normal"]
    clauses = []
    if worse:
        clauses.append(_unusual_clause(worse, names, worse_than, quantity.worse, reference_size))
    if better:
        clauses.append(_unusual_clause(better, names, 100.0 - worse_than, quantity.better, reference_size))
    if normal and clauses:
        clauses.append(f"{_stage_list(normal)} {'look' if len(normal) > 1 else 'looks'} normal")
    if not clauses:
        top = int(np.argmax(worse_than))
        clauses.append(
            f"every stage lies within the ID range ({BAND_PERCENT[0]:g}–{BAND_PERCENT[1]:g} %); the least typical, "
            f"{names[top].short}, {quantity.worse[0]} {_share_of_id(worse_than[top], reference_size)}"
        )
    sentence = "; ".join(clauses) + "."
    return sentence[0].upper() + sentence[1:]


def explanation_columns(
    names: Sequence[StageName],
    reference: Mapping[str, np.ndarray],
    scored: Mapping[str, np.ndarray],
    score: str,
    profiled: Mapping[str, np.ndarray] | None = None,
) -> tuple[list[str], list[list[str]]]:
    """CSV columns of `score --explain` for M images: per-stage percentiles, the score's ID percentile, the
    95%-TPR threshold, the verdict and the sentence.

    reference, scored: explorer.score_arrays of the ID reference images (R rows) and of the images (M rows), scored
    with the same settings; profiled: the images' profile_arrays (default: `scored`). Returns (header, M rows).
    """
    profiled = scored if profiled is None else profiled
    if score not in reference or score not in scored or score not in profiled:
        raise KeyError(f"score {score!r} is not available (LR needs the early checkpoint)")
    stages = stage_reference(stage_values(reference, score), score, names)
    threshold = id_threshold95(reference[score])
    header = [*(f"pct_stage{name.number}" for name in names), "id_pct", "threshold95", "verdict", "explanation"]
    rows = []
    values = np.asarray(scored[score], dtype=np.float64)
    profiles = layer_profiles(stages, stage_values(profiled, score))
    for profile, value, id_pct in zip(profiles, values, percent_below(reference[score], values), strict=True):
        call = verdict(float(value), threshold)
        rows.append(
            [
                *(percent_text(p, 2) for p in profile.worse_than),
                percent_text(id_pct, 2),
                f"{threshold:.6g}",
                call,
                " ".join(filter(None, (profile.sentence, verdict_note(profile, call)))),
            ]
        )
    return header, rows
