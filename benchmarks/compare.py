"""The paper's comparison on the offline benchmark, in one command; prints and writes JSON, CSV and Markdown.

    python -m benchmarks.compare --out benchmarks/results            # full demo sets (about 15-25 min, 2 cores)
    python -m benchmarks.compare --subset 40 --out /tmp/compare      # a few images per set: CI-sized smoke run

ID: demo:fashion_mnist_test. OOD: digits, letters, textures (far); inverted and rotated Fashion-MNIST (near).
Methods: DLSR MSE / MFsim / LR (checkpoints/default), the pixel DDPM, the feature autoencoder and the classifier
head with its pytorch-ood detectors (checkpoints/baselines), k-NN and Mahalanobis (fitted on Fashion-MNIST train
features of the fit set). The main table uses every baseline exactly as shipped (the pixel DDPM with its stored
setting and normalisation). The pixel DDPM's reconstruction settings are also scored on the test sets, as rows
marked oracle: they are not used to choose anything (settings are chosen on validation data, with
`dlsr_core.baselines.pixel_ddpm.score_setting`). Speeds are measured in this run: images/s from each method's cached
input and end to end from decoded images, on the same images for every method.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from dlsr_core.baselines.pixel_ddpm import PixelDDPM, ReconstructionSetting, score_setting
from dlsr_core.baselines.store import baselines_dir
from dlsr_core.checkpoint import DEFAULT_RUN_DIR
from dlsr_core.comparison import (
    FPR95_NOTE,
    METHODS,
    Baselines,
    ComparisonReport,
    SetInputs,
    end_to_end_images_per_second,
    load_inputs,
    score_methods,
)
from dlsr_core.data import DatasetError, open_dataset
from dlsr_core.evaluation import EvaluationSettings
from dlsr_core.features import subsample_rows
from dlsr_core.scoring import Detector
from dlsr_core.validation import fit_indices

ID_SET = "demo:fashion_mnist_test"
OOD_GROUPS = {
    "demo:digits": "far",
    "demo:letters": "far",
    "demo:textures": "far",
    "demo:fashion_mnist_inverted": "near",
    "demo:fashion_mnist_rotated": "near",
}
TRAIN_SET = "fashion_mnist:train"
# The pixel DDPM's reconstruction settings tried (noise levels out of T = 1000; stride 0 = one step per level).
PIXEL_SETTINGS = (
    ReconstructionSetting(levels=(50, 100, 150, 200, 250), stride=0),
    ReconstructionSetting(levels=(100, 200, 300, 400, 500), stride=0),
    ReconstructionSetting(levels=(100, 200, 300, 400, 500, 600, 700, 800, 900), stride=0),
    ReconstructionSetting(levels=(100, 200, 300, 400, 500), stride=50),
)
DLSR_TRAINING_MINUTES = 17.0  # checkpoints/README.md: 10 epochs of the shipped LFDN on the project CPU


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def distance_training_features(detector: Detector, limit: int | None) -> tuple[torch.Tensor | None, str]:
    """Fashion-MNIST train features of the fit set for k-NN / Mahalanobis (all, or of `limit` random images)."""
    try:
        inputs = load_inputs(detector, [TRAIN_SET], pixels=False, limit=limit, seed=1)
    except DatasetError as error:
        return None, f"k-NN and Mahalanobis skipped: {error}"
    fit = torch.as_tensor(np.isin(inputs[TRAIN_SET].indices.numpy(), fit_indices()))
    features = inputs[TRAIN_SET].features[fit]
    return features, f"k-NN and Mahalanobis fitted on {len(features)} {TRAIN_SET} features of the fit set"


def calibration_pixels(count: int) -> torch.Tensor | None:
    """The validation images the shipped pixel DDPM was normalised on (the first `count` of them), or None."""
    from dlsr_core.baselines.train import fashion_mnist_pixels, pixel_validation_rows

    try:
        return fashion_mnist_pixels(pixel_validation_rows()[0][:count])
    except DatasetError:
        return None


def pixel_ablation(
    model: PixelDDPM,
    inputs: dict[str, SetInputs],
    per_set: int | None,
    calibration: torch.Tensor,
    seed: int,
    settings: tuple[ReconstructionSetting, ...] = PIXEL_SETTINGS,
) -> list[dict]:
    """AUROC of each reconstruction setting on a fixed subset of every test set: oracle rows, nothing is chosen."""
    rows = []
    for setting in settings:
        log(f"pixel DDPM settings (oracle): {setting.label()}")
        chosen = {
            name: set_inputs.pixels[torch.as_tensor(subsample_rows(len(set_inputs), per_set, seed))]
            for name, set_inputs in inputs.items()
        }
        ood = {name: chosen[name] for name in OOD_GROUPS}
        result = score_setting(model, setting, calibration, chosen[ID_SET], ood, seed)
        row = {
            "setting": asdict(setting),
            "label": setting.label(),
            "shipped": setting == model.setting,
            "unet_passes_per_image": setting.evaluations(),
            "images_per_second_from_pixels": result.images_per_second,
            "auroc": result.auroc,
            "fpr95": result.fpr95,
        }
        for group in ("far", "near", "all"):
            chosen_sets = [name for name in OOD_GROUPS if group == "all" or OOD_GROUPS[name] == group]
            row[f"auroc_{group}"] = float(np.mean([result.auroc[name] for name in chosen_sets]))
        rows.append(row)
    return rows


def ablation_markdown(rows: list[dict], per_set: int | None, calibration: int) -> str:
    lines = [
        "| reconstruction setting | UNet passes / image | AUROC far | AUROC near | AUROC all | img/s (from pixels) |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        mark = " **(shipped, main table)**" if row["shipped"] else ""
        lines.append(
            f"| {row['label'].split(' (')[0]}{mark} | {row['unet_passes_per_image']} | {100 * row['auroc_far']:.2f} | "
            f"{100 * row['auroc_near']:.2f} | {100 * row['auroc_all']:.2f} | "
            f"{row['images_per_second_from_pixels']:.1f} |"
        )
    subset = "all images" if per_set is None else f"at most {per_set} images"
    lines += [
        "",
        f"**Oracle rows**: AUROC in %, {subset} of each *test* set; per-level errors normalised with {calibration} "
        "validation Fashion-MNIST training images (the shipped model's). Nothing is chosen from these rows.",
    ]
    return "\n".join(lines)


def training_records(baselines: Baselines) -> dict[str, dict]:
    records = {
        "DLSR LFDN (MSE, MFsim, LR)": {
            "seconds": 60 * DLSR_TRAINING_MINUTES,
            "what": "LFDN 512x6, 10 epochs on 60,000 feature vectors (from the model card, not re-measured here)",
        }
    }
    if baselines.pixel_ddpm is not None:
        info = baselines.pixel_ddpm.info
        records["Pixel DDPM"] = {
            "seconds": info.train_seconds or float("nan"),
            "what": f"UNet {(info.parameters or 0) / 1e6:.2f} M parameters, {info.steps_done} steps of "
            f"{(info.train or {}).get('batch_size')} images ({info.epochs or 0:.2f} epochs), stopped: {info.stopped}",
        }
    if baselines.feature_ae is not None:
        info = baselines.feature_ae.info
        records["Feature AE"] = {
            "seconds": info.train_seconds or float("nan"),
            "what": f"MLP autoencoder, {(info.train or {}).get('epochs')} epochs on {info.train_features} "
            "cached feature vectors",
        }
    if baselines.classifier is not None:
        info = baselines.classifier.info
        accuracy = 100 * (info.test_accuracy if info.test_accuracy is not None else float("nan"))
        records["Classifier CNN (MSP, EBO, DICE, ASH-S, ReAct, ViM)"] = {
            "seconds": (info.train_seconds or 0.0) + (info.fit_detectors_seconds or 0.0),
            "what": f"CNN, {(info.train or {}).get('epochs')} epochs on {info.train_images} labelled images "
            f"(test accuracy {accuracy:.1f}%), plus fitting DICE, ReAct and ViM",
        }
    return records


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=str(DEFAULT_RUN_DIR))
    parser.add_argument("--baselines", default=str(baselines_dir()))
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--name", default="compare", help="output file stem")
    parser.add_argument("--subset", type=int, default=None, help="use at most N images per set (smoke test)")
    parser.add_argument("--speed-images", type=int, default=256, help="ID images for the end-to-end speed test")
    parser.add_argument("--ablation-per-set", type=int, default=150, help="images per set in the pixel ablation")
    parser.add_argument(
        "--calibration-images", type=int, default=1000, help="validation images normalising the oracle settings"
    )
    parser.add_argument(
        "--pixel-settings", type=int, nargs="*", default=None, help="indices into PIXEL_SETTINGS to try (default all)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--machine-note",
        default="shared machine: other jobs may have been running, so speeds are noisy",
        help="how quiet the machine was (printed with the speeds)",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    settings = EvaluationSettings()
    detector = Detector.load(args.checkpoint, device="cpu")
    train_limit = None if args.subset is None else 4 * args.subset
    distance_train, distance_note = distance_training_features(detector, train_limit)
    baselines = Baselines.load(args.baselines, distance_train=distance_train)
    notes = [distance_note] + [f"{kind} unavailable: {why}" for kind, why in baselines.problems.items()]
    log("loading inputs (features, pixels)")
    specs = [ID_SET, *OOD_GROUPS]
    inputs = load_inputs(detector, specs, limit=args.subset)

    ablation_rows: list[dict] = []
    ablation_per_set = args.ablation_per_set if args.subset is None else args.subset
    calibration_count = args.calibration_images if args.subset is None else min(args.calibration_images, 32)
    if baselines.pixel_ddpm is not None:
        notes.append(f"pixel DDPM in the main table: its shipped setting, {baselines.pixel_ddpm.setting.label()}")
        calibration = calibration_pixels(calibration_count)
        if calibration is None:
            notes.append("pixel DDPM: no Fashion-MNIST training images, so no oracle rows of other settings")
        else:
            chosen = PIXEL_SETTINGS if args.pixel_settings is None else [PIXEL_SETTINGS[i] for i in args.pixel_settings]
            ablation_rows = pixel_ablation(
                baselines.pixel_ddpm, inputs, ablation_per_set, calibration, settings.seed, tuple(chosen)
            )

    methods = baselines.available(detector)
    log(f"scoring {len(methods)} methods on {sum(len(v) for v in inputs.values())} images")
    results = score_methods(methods, inputs, detector, baselines, settings, progress=lambda m: log(f"  {m}"))
    report = ComparisonReport(
        ID_SET,
        OOD_GROUPS,
        {name: result.scores for name, result in results.items()},
        feature_speed={name: result.images_per_second for name, result in results.items()},
        training=training_records(baselines),
        notes=notes,
    )
    log(f"end-to-end speed on {args.speed_images} ID images")
    dataset = open_dataset(ID_SET)
    speed_images = [dataset[int(i)] for i in inputs[ID_SET].indices[: args.speed_images]]
    report.end_to_end_speed = end_to_end_images_per_second(
        methods, speed_images, detector, baselines, settings, progress=lambda m: log(f"  {m}")
    )
    write(report, ablation_rows, ablation_per_set, calibration_count, args, time.perf_counter() - started)


def write(report: ComparisonReport, ablation_rows, ablation_per_set, calibration_count, args, seconds: float) -> None:
    machine = (
        f"{platform.machine()} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}; {args.machine_note}"
    )
    speed_note = (
        "img/s cached: from each method's stored input (DLSR feature vectors, or decoded pixel tensors for the "
        "pixel DDPM and the classifier CNN), backbone excluded; img/s images: end to end from decoded images, "
        f"{args.speed_images} ID images, one method after another in this run. Machine: {machine}."
    )
    ratio = ""
    e2e = report.end_to_end_speed
    if "mfsim" in e2e and "pixel_ddpm" in e2e:
        ratio = f"DLSR-MFsim / pixel DDPM end-to-end speed ratio: {e2e['mfsim'] / e2e['pixel_ddpm']:.1f}x"
    sections = [
        f"# Comparison on the offline benchmark (ID: {report.id_set})",
        "",
        report.to_markdown(),
        "",
        speed_note,
        "",
        ratio,
        "",
        "## Training time",
        "",
        report.training_markdown(),
        "",
        *(
            [
                "## Pixel DDPM settings (oracle rows)",
                "",
                ablation_markdown(ablation_rows, ablation_per_set, calibration_count),
                "",
            ]
            if ablation_rows
            else []
        ),
        "## Notes",
        "",
        *(f"- {note}" for note in report.notes),
        "",
        f"Run time {seconds / 60:.1f} min. {FPR95_NOTE}",
    ]
    markdown = "\n".join(sections) + "\n"
    print(markdown)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = report.to_dict()
    summary.update(
        machine=machine,
        speed_ratio_mfsim_over_pixel_ddpm=(e2e["mfsim"] / e2e["pixel_ddpm"]) if ratio else None,
        pixel_ablation=ablation_rows,
        subset=args.subset,
        run_seconds=seconds,
        method_labels={name: m.label for name, m in METHODS.items()},
    )
    (out / f"{args.name}.json").write_text(json.dumps(summary, indent=2))
    (out / f"{args.name}.csv").write_text(report.to_csv())
    (out / f"{args.name}.md").write_text(markdown)
    log(f"wrote {out / args.name}.{{json,csv,md}}")


if __name__ == "__main__":
    main()
