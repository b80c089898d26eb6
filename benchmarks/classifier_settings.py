"""Choose the settings of the classifier detectors that have one and need no refit — DICE's sparsity p and ASH-S's
pruning percentile — on validation data, with the protocol of benchmarks/protocol.py; optionally store them.

    python -m benchmarks.classifier_settings           # prints; writes benchmarks/results/classifier_settings.{md,json}
    python -m benchmarks.classifier_settings --apply   # ... and stores the choice in checkpoints/baselines/classifier

The papers' settings (DICE p = 0.9, ASH-S@90, both from CIFAR ResNets with 512-2,048 penultimate features) are the
defaults; a candidate replaces one only when it beats it on the validation objective by more than 0.1 point. The
images are benchmarks.pixel_levels' validation images (ID: validation images from position 2 mod 5; OOD: `shapes`,
`fashion_mnist:val+rollx` / `+rolly` from positions 3 and 4 mod 5). ReAct's percentile is fitted on training
activations and ViM's subspace on training features; changing them means refitting, so they keep their papers'
defaults.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import torch

from benchmarks.pixel_levels import set_pixels
from benchmarks.protocol import VALIDATION_ID, VALIDATION_OOD, choose
from dlsr_core.baselines.classifier import DEFAULT_PATH, ClassifierBaselines

CANDIDATES = {
    "dice": ("dice_p", (0.0, 0.1, 0.3, 0.5, 0.7, 0.9)),  # p = 0 keeps every weight: plain energy
    "ash_s": ("ash_percentile", (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)),
}
PAPERS = {"dice": 0.9, "ash_s": 0.9}  # the defaults a choice must beat
MARGIN = 0.001  # AUROC fraction: a gain within the noise does not move a paper's setting
RESULTS = Path("benchmarks/results")


def select(model: ClassifierBaselines, detector: str, images: int):
    """The protocol's choice of `detector`'s setting among CANDIDATES (default: the paper's value)."""
    field_name, values = CANDIDATES[detector]

    def validation_scores(value: float, source):
        candidate = replace(model, settings=replace(model.settings, **{field_name: value}), _detectors=None)
        id_scores = candidate.score(detector, source(VALIDATION_ID, images))
        return id_scores, {name: candidate.score(detector, source(name, images)) for name in VALIDATION_OOD}

    return choose(values, validation_scores, set_pixels, default=PAPERS[detector], margin=MARGIN)


def markdown(choices: dict, images: int) -> str:
    lines = [
        "# Classifier-detector settings, chosen on validation data",
        "",
        f"Validation ID: {images} `fashion_mnist:val` images; OOD: {images} each of `shapes` (far), "
        "`fashion_mnist:val+rollx` and `+rolly` (near), the images of benchmarks/pixel_levels.py. AUROC in %; "
        "objective = mean of far and near. The papers' setting is kept unless another beats it by more than 0.1 point. "
        "No test set was read.",
        "",
        "| detector | setting | val far | val near | **val objective** |",
        "|---|---|---|---|---|",
    ]
    for detector, choice in choices.items():
        field_name = CANDIDATES[detector][0]
        for value, row in zip(choice.candidates, choice.validation, strict=True):
            mark = " **(chosen)**" if value == choice.best else (" (paper's)" if value == PAPERS[detector] else "")
            lines.append(
                f"| {detector} | {field_name} = {value}{mark} | {100 * row['far']:.2f} | {100 * row['near']:.2f} | "
                f"**{100 * row['objective']:.2f}** |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000, help="validation images per set (default 1,000)")
    parser.add_argument("--apply", action="store_true", help="store the chosen settings in the shipped file")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    model = ClassifierBaselines.load(DEFAULT_PATH)
    choices = {detector: select(model, detector, args.images) for detector in CANDIDATES}
    text = markdown(choices, args.images)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "classifier_settings.md").write_text(text)
    record = {
        detector: {
            "setting": CANDIDATES[detector][0],
            "chosen": choice.best,
            "candidates": [
                {"value": value, "validation": row}
                for value, row in zip(choice.candidates, choice.validation, strict=True)
            ],
        }
        for detector, choice in choices.items()
    }
    (out / "classifier_settings.json").write_text(json.dumps(record, indent=1) + "\n")
    if args.apply:
        chosen = {CANDIDATES[detector][0]: choice.best for detector, choice in choices.items()}
        updated = replace(model, settings=replace(model.settings, **chosen), _detectors=None)
        updated.save(DEFAULT_PATH)
        print(f"stored {chosen} in {DEFAULT_PATH}", flush=True)


if __name__ == "__main__":
    main()
