"""Uploaded files: decoded in memory (never written to disk), embedded once, scored against the ID reference."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from dlsr_core.checkpoint import CheckpointError
from dlsr_core.explorer.explanation import LayerProfile, image_profiles
from dlsr_core.explorer.references import ImageRef
from dlsr_core.explorer.scores import id_threshold95, percent_below, score_matrix, verdict
from dlsr_core.scoring import DEFAULT_DRAWS, DEFAULT_STEPS, Detector

UPLOAD_TYPES = ("png", "jpg", "jpeg", "webp", "bmp", "tif", "tiff", "gif")

MAX_UPLOAD_BYTES = 50 * 1024 * 1024

PREVIEW_SIZE = 256
# Decoded pixels one batch may hold (each upload is decoded in turn and kept at most data.MAX_DECODED_SIDE px on its
# longest side, ~1 MP): 64 MP is about 190 MB of RGB. Files beyond it get a message instead of more memory.
MAX_BATCH_PIXELS = 64_000_000
# Previews are padded to at most this aspect ratio, so a 10000 x 1 image still makes a visible, valid thumbnail.
MAX_PREVIEW_ASPECT = 8


@dataclass(frozen=True)
class UploadBatch:
    """Decoded uploads: names, RGB previews (at most PREVIEW_SIZE px) and features (M, D) of the readable files;
    errors of the others."""

    names: list[str]
    images: list[Image.Image]
    features: Tensor
    errors: list[tuple[str, str]]
    notes: list[tuple[str, str]] = field(default_factory=list)  # readable files that were converted on the way


def _conversion_note(data: bytes, decoded_size: tuple[int, int] | None = None) -> str | None:
    """Why a readable image was not scored exactly as stored (animation, high bit depth, downscaled), or None."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            frames, mode, size = getattr(image, "n_frames", 1), image.mode, image.size
    except Exception:  # load_image already accepted the bytes; a failing probe only loses the note
        return None
    notes = []
    if decoded_size is not None and max(size) > max(decoded_size):
        notes.append(f"downscaled from {size[0]}×{size[1]} to {decoded_size[0]}×{decoded_size[1]} px while decoding")
    if frames > 1:
        notes.append(f"animated/multi-page ({frames} frames): the first frame was scored")
    if mode in ("I", "F") or mode.startswith("I;16"):
        notes.append(f"{'16-bit' if '16' in mode else mode + '-mode'} image rescaled to 8 bits by its value range")
    return "; ".join(notes) or None


def decode_uploads(
    files: Sequence[tuple[str, bytes]],
) -> tuple[list[tuple[str, Image.Image]], list[tuple[str, str]], list[tuple[str, str]]]:
    """Decode (name, bytes) pairs in memory (nothing is written to disk).

    Returns (name, RGB image) for readable files, (name, reason) errors for the others and (name, note) for
    readable files that were converted (first frame of an animation, 16-bit rescaled).
    """
    from dlsr_core.data import ImageLoadError, load_image

    good: list[tuple[str, Image.Image]] = []
    errors: list[tuple[str, str]] = []
    notes: list[tuple[str, str]] = []
    pixels = 0
    for name, data in files:
        if len(data) > MAX_UPLOAD_BYTES:
            errors.append((name, f"file is {len(data) / 1e6:.0f} MB; the limit is {MAX_UPLOAD_BYTES / 1e6:.0f} MB"))
            continue
        try:
            image = load_image(bytes(data))  # one at a time, reduced while decoding: see data.MAX_DECODED_SIDE
            if pixels + image.width * image.height > MAX_BATCH_PIXELS:
                full = f"the batch already holds {pixels / 1e6:.0f} MP of decoded images"
                errors.append((name, f"not scored: {full}; score it in a smaller batch"))
                continue
            pixels += image.width * image.height
            good.append((name, image))
        except ImageLoadError as error:
            errors.append((name, str(error).replace("image bytes: ", "")))
            continue
        except Exception as error:  # a decoder bug must not take the rest of the batch down
            errors.append((name, f"could not be decoded ({type(error).__name__}: {error})"))
            continue
        note = _conversion_note(bytes(data), image.size)
        if note:
            notes.append((name, note))
    return good, errors, notes


def embed_images(extractor, input_size: int, images: Sequence[Image.Image], batch_size: int = 8) -> Tensor:
    """Backbone features (M, D) of RGB images; (0, D) for none."""
    rows = [
        extractor(extractor.preprocess(list(images[i : i + batch_size]), input_size)).float().cpu()
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(rows) if rows else torch.empty(0, extractor.feature_dim)


def prepare_uploads(extractor, input_size: int, files: Sequence[tuple[str, bytes]]) -> UploadBatch:
    """Decode uploads in memory and run the readable ones through the backbone (the slow step, done once)."""
    good, errors, notes = decode_uploads(files)
    features = embed_images(extractor, input_size, [image for _, image in good])
    return UploadBatch([name for name, _ in good], [_preview(image) for _, image in good], features, errors, notes)


def _preview(image: Image.Image, size: int = PREVIEW_SIZE) -> Image.Image:
    """A copy no larger than size x size: a batch of big photos must not be kept (and cached) at full size.

    Extreme aspect ratios (150 x 1, 1 x 10000) are centred on a black band of at most MAX_PREVIEW_ASPECT : 1, so any
    later resize to a fixed width keeps both sides >= 1 px.
    """
    preview = image.copy()
    preview.thumbnail((size, size))
    width, height = preview.size
    canvas_size = (max(width, -(-height // MAX_PREVIEW_ASPECT)), max(height, -(-width // MAX_PREVIEW_ASPECT)))
    if canvas_size != preview.size:
        canvas = Image.new(preview.mode, canvas_size)
        canvas.paste(preview, ((canvas_size[0] - width) // 2, (canvas_size[1] - height) // 2))
        preview = canvas
    return preview


@dataclass(frozen=True)
class ImageScore:
    """One uploaded image scored against the ID reference set."""

    name: str
    score: float
    threshold: float
    verdict: str
    id_percentile: float  # percent of ID reference scores below this image's score, ties half (scores.percent_below)
    stage_cos: tuple[float, ...]
    profile: LayerProfile | None = None  # per-stage evidence under the chosen score


def score_uploads(
    detector: Detector,
    features: Tensor,
    names: Sequence[str],
    reference: Mapping[str, np.ndarray],
    score: str,
    timestep: int,
    steps: int | None = DEFAULT_STEPS,
    seed: int = 0,
    draws: int = DEFAULT_DRAWS,
) -> list[ImageScore]:
    """Score upload features (M, D) under `score` and place each, and each of its stages, among the ID reference.

    `reference` is explorer.score_matrix of the ID reference features at the same (timestep, steps, seed, draws).
    """
    if len(names) == 0:
        return []
    detector.check_features(features)
    scores = score_matrix(detector, features, timestep, steps, seed, with_lr=score == "lr", draws=draws)
    if score not in scores or score not in reference:
        raise CheckpointError(f"score {score!r} is not available for this checkpoint")
    id_scores = np.asarray(reference[score], dtype=np.float64)
    threshold = id_threshold95(id_scores)
    id_percents = percent_below(id_scores, scores[score])
    profiles = image_profiles(detector, features, reference, score, timestep, steps, draws, seed)
    results = []
    for row, name in enumerate(names):
        value = float(scores[score][row])
        results.append(
            ImageScore(
                name=name,
                score=value,
                threshold=threshold,
                verdict=verdict(value, threshold),
                id_percentile=float(id_percents[row]),
                stage_cos=tuple(float(v) for v in scores["stage_cos"][row]),
                profile=profiles[row],
            )
        )
    return results


def encode_png(image: Image.Image) -> bytes:
    """PNG bytes of an image (used for sample images and thumbnails, in memory)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def sample_files(sets: Mapping[str, str], per_set: int = 2, seed: int = 0) -> list[tuple[str, bytes, ImageRef]]:
    """A few images of each set (`sets`: spec -> display name; the experiment's ID and OOD sets) as in-memory PNG
    "uploads" (name, bytes, the set image it is), for a demo without files at hand. Sets that cannot be opened
    here, and unreadable images, are left out."""
    from dlsr_core.data import DatasetError, open_dataset

    rng = np.random.default_rng(seed)
    files = []
    for spec, name in sets.items():
        try:
            dataset = open_dataset(spec)
        except (DatasetError, OSError):
            continue
        label = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
        for index in rng.choice(len(dataset), size=min(per_set, len(dataset)), replace=False):
            image = dataset[int(index)]
            if image is not None:
                files.append((f"{label}_{int(index)}.png", encode_png(image), ImageRef.of_set(spec, int(index))))
    return files


def digest_files(files: list[tuple[str, bytes]]) -> tuple[tuple[str, str], ...]:
    """(name, sha256 hex) of every upload: what identifies a batch of uploads in caches."""
    return tuple((name, hashlib.sha256(data).hexdigest()) for name, data in files)
