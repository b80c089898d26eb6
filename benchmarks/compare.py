"""The paper's comparison on the offline benchmark, in one command; prints and writes JSON, CSV and Markdown.

    python -m benchmarks.compare --out benchmarks/results            # full demo sets (about 15-25 min, 2 cores)
    python -m benchmarks.compare --subset 40 --out /tmp/compare      # a few images per set: CI-sized smoke run

ID: demo:fashion_mnist_test. OOD: digits, letters, textures (far); inverted and rotated Fashion-MNIST (near).
Methods: DLSR MSE / MFsim / LR (checkpoints/default), the pixel DDPM, the feature autoencoder and the classifier
head with its pytorch-ood detectors (checkpoints/baselines), k-NN and Mahalanobis (fitted on Fashion-MNIST train
features). The pixel DDPM is first ablated over reconstruction settings (noise levels, DDIM steps) and its best
setting (all-sets AUROC on the ablation subset) is used in the main table. Speeds are measured in this run: images/s
from each method's cached input and end to end from decoded images, on the same images for every method.
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

from dlsr_core.baselines.pixel_ddpm import PixelDDPM, ReconstructionSetting, images_to_pixels, split_validation
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
from dlsr_core.data import DatasetError, load_fashion_mnist, open_dataset
from dlsr_core.evaluation import EvaluationSettings
from dlsr_core.features import subsample_rows
from dlsr_core.metrics import ood_metrics
from dlsr_core.scoring import Detector

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
    """Fashion-MNIST train features for k-NN / Mahalanobis (all, or `limit` random ones), and a note."""
    try:
        inputs = load_inputs(detector, [TRAIN_SET], prelogits=False, pixels=False, limit=limit, seed=1)
    except DatasetError as error:
        return None, f"k-NN and Mahalanobis skipped: {error}"
    features = inputs[TRAIN_SET].features
    return features, f"k-NN and Mahalanobis fitted on {len(features)} {TRAIN_SET} features"


def calibration_pixels(model: PixelDDPM, count: int) -> torch.Tensor | None:
    """Held-out Fashion-MNIST training images the pixel DDPM never saw (its validation split), `count` of them."""
    try:
        images, _ = load_fashion_mnist("train")
    except DatasetError:
        return None
    train = model.info.get("train", {})
    _, held_out = split_validation(len(images), train.get("validation_images", 1000), train.get("seed", 0))
    return images_to_pixels(list(images[held_out[:count]]))


def pixel_ablation(
    model: PixelDDPM,
    inputs: dict[str, SetInputs],
    per_set: int | None,
    calibration: torch.Tensor,
    seed: int,
    settings: tuple[ReconstructionSetting, ...] = PIXEL_SETTINGS,
) -> tuple[list[dict], PixelDDPM]:
    """AUROC of each reconstruction setting on a fixed subset of every set; returns rows and the best model."""
    rows, best, best_auroc = [], model, -1.0
    for setting in settings:
        log(f"pixel DDPM ablation: {setting.label()}")
        candidate = model.with_setting(setting, calibration, seed)
        started, scores, count = time.perf_counter(), {}, 0
        for name, set_inputs in inputs.items():
            rows_used = torch.as_tensor(subsample_rows(len(set_inputs), per_set, seed))
            scores[name] = candidate.score_pixels(set_inputs.pixels[rows_used], seed)
            count += len(rows_used)
        seconds = time.perf_counter() - started
        metrics = {name: ood_metrics(scores[ID_SET], scores[name]) for name in OOD_GROUPS}
        row = {
            "setting": asdict(setting),
            "label": setting.label(),
            "unet_passes_per_image": setting.evaluations(),
            "images_per_second_from_pixels": count / seconds,
            "auroc": {name: m.auroc for name, m in metrics.items()},
            "fpr95": {name: m.fpr95 for name, m in metrics.items()},
        }
        for group in ("far", "near", "all"):
            chosen = [m for name, m in metrics.items() if group == "all" or OOD_GROUPS[name] == group]
            row[f"auroc_{group}"] = float(np.mean([m.auroc for m in chosen]))
        rows.append(row)
        if row["auroc_all"] > best_auroc:
            best, best_auroc = candidate, row["auroc_all"]
    return rows, best


def ablation_markdown(rows: list[dict], per_set: int | None, calibration: int) -> str:
    lines = [
        "| reconstruction setting | UNet passes / image | AUROC far | AUROC near | AUROC all | img/s (from pixels) |",
        "|---|---|---|---|---|---|",
    ]
    best = max(rows, key=lambda row: row["auroc_all"])
    for row in rows:
        mark = " **(best, used below)**" if row is best else ""
        lines.append(
            f"| {row['label'].split(' (')[0]}{mark} | {row['unet_passes_per_image']} | {100 * row['auroc_far']:.2f} | "
            f"{100 * row['auroc_near']:.2f} | {100 * row['auroc_all']:.2f} | "
            f"{row['images_per_second_from_pixels']:.1f} |"
        )
    subset = "all images" if per_set is None else f"at most {per_set} images"
    lines += [
        "",
        f"AUROC in %, {subset} of each set; per-level errors normalised with {calibration} held-out Fashion-MNIST "
        "training images. The best setting is chosen on these test sets, which favours the baseline.",
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
            "seconds": info.get("train_seconds", float("nan")),
            "what": f"UNet {info.get('parameters', 0) / 1e6:.2f} M parameters, {info.get('steps_done')} steps of "
            f"{info.get('train', {}).get('batch_size')} images ({info.get('epochs_equivalent', 0):.2f} epochs)",
        }
    if baselines.feature_ae is not None:
        info = baselines.feature_ae.info
        records["Feature AE"] = {
            "seconds": info.get("train_seconds", float("nan")),
            "what": f"MLP autoencoder, {info.get('train', {}).get('epochs')} epochs on {info.get('train_features')} "
            "cached feature vectors",
        }
    if baselines.classifier is not None:
        info = baselines.classifier.info
        records["Classifier head (MSP, EBO, DICE, ASH-S, ReAct, ViM)"] = {
            "seconds": info.get("train_seconds", 0.0) + info.get("fit_detectors_seconds", 0.0),
            "what": f"linear head, {info.get('train', {}).get('epochs')} epochs on {info.get('train_features')} "
            f"pre-logit vectors with labels (ID test accuracy {100 * info.get('test_accuracy', float('nan')):.1f}%)"
            ", plus fitting DICE, ReAct and ViM",
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
    parser.add_argument("--calibration-images", type=int, default=300, help="held-out ID images for the DDPM")
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
    log("loading inputs (features, pre-logits, pixels)")
    specs = [ID_SET, *OOD_GROUPS]
    inputs = load_inputs(detector, specs, limit=args.subset)

    ablation_rows: list[dict] = []
    ablation_per_set = args.ablation_per_set if args.subset is None else args.subset
    calibration_count = args.calibration_images if args.subset is None else min(args.calibration_images, 32)
    if baselines.pixel_ddpm is not None:
        calibration = calibration_pixels(baselines.pixel_ddpm, calibration_count)
        if calibration is None:
            notes.append("pixel DDPM: no held-out Fashion-MNIST training images, shipped setting used (no ablation)")
        else:
            chosen = PIXEL_SETTINGS if args.pixel_settings is None else [PIXEL_SETTINGS[i] for i in args.pixel_settings]
            ablation_rows, baselines.pixel_ddpm = pixel_ablation(
                baselines.pixel_ddpm, inputs, ablation_per_set, calibration, settings.seed, tuple(chosen)
            )
            notes.append(f"pixel DDPM setting in the main table: {baselines.pixel_ddpm.setting.label()}")

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
        "img/s cached: from each method's stored input (DLSR feature vectors, pre-logits, or decoded pixel tensors "
        "for the pixel DDPM), backbone excluded; img/s images: end to end from decoded images, "
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
            ["## Pixel DDPM ablation", "", ablation_markdown(ablation_rows, ablation_per_set, calibration_count), ""]
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
