"""Each difference between the paper's equations and the authors' released code, switched on alone, measured.

Offline benchmark: an LFDN is trained on efficientnet_lite0 features (64 px) of a class-balanced Fashion-MNIST training
subset and evaluated on the demo sets (ID: demo:fashion_mnist_test; OOD: digits, letters, textures, inverted and
rotated Fashion-MNIST). Every variant gets the same reduced training budget (subset size, epochs, LFDN size); the
variant changes one item of the `official` preset (dlsr_core.presets) and nothing else. Scoring-only items (sampler,
MFsim stages) reuse the paper model. The paper preset is also retrained with a second seed: the spread between the two
seeds is the noise floor for reading the other rows. Prints each variant and writes JSON and Markdown:

    flock /tmp/dlsr-heavy.lock python -m benchmarks.official_ablation --out benchmarks/results

The default LFDN is 1024 x 6: twice the 512-d feature size, the paper setting's ratio (1440 for 720-d features), so
the released code's timestep-MLP width (the feature size, 720 there) is half the LFDN width here as it is there.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from benchmarks.ablation_default_model import Subset as BalancedSubset  # first count // 10 of each class
from dlsr_core.backbones import create_feature_extractor
from dlsr_core.data import open_dataset
from dlsr_core.diffusion import LFDNConfig
from dlsr_core.evaluation import EvaluationSettings, evaluate
from dlsr_core.features import extract_features
from dlsr_core.presets import (
    PRESETS,
    ArchitectureOptions,
    FeatureOptions,
    ScoringOptions,
    TrainingOptions,
    time_embed_width,
)
from dlsr_core.scoring import Detector
from dlsr_core.training import Provenance, TrainConfig, train

ID_SET = "demo:fashion_mnist_test"
OOD_SETS = ["demo:digits", "demo:letters", "demo:textures", "demo:fashion_mnist_inverted", "demo:fashion_mnist_rotated"]
SCORES = ("mse", "mfsim", "lr")
BACKBONE = "efficientnet_lite0"


@dataclass(frozen=True)
class Variant:
    """One row: the options that differ from the paper preset, and what they stand for."""

    name: str
    item: str
    features: FeatureOptions = field(default_factory=FeatureOptions)
    architecture: ArchitectureOptions = field(default_factory=ArchitectureOptions)
    scoring: ScoringOptions = field(default_factory=ScoringOptions)
    training: TrainingOptions | None = None  # None: the shared budget with the paper preset's optimiser settings
    seed: int = 0


def variants(epochs: int) -> list[Variant]:
    """The paper baseline, its second seed, every single item of the official preset, and the whole preset."""
    official = PRESETS["official"]
    official_training = replace(official.training, epochs=epochs)
    return [
        Variant("paper", "paper preset (baseline)"),
        Variant("paper-seed1", "paper preset, training seed 1 (noise floor)", seed=1),
        Variant("pooling", "stride-16-grid pooling", features=FeatureOptions(pooling="stride16-grid")),
        Variant("standardization", "std + 1e-5 instead of + 1e-6", features=FeatureOptions(std_eps=1e-5)),
        Variant("resize", "bilinear resize (lite0's own: bicubic)", features=FeatureOptions(resize="bilinear")),
        Variant(
            "normalization",
            "ImageNet mean/std (lite0's own: 0.5/0.5)",
            features=FeatureOptions(normalization="imagenet"),
        ),
        Variant(
            "same-padding",
            "static 'same' padding for the native size",
            features=FeatureOptions(same_padding="static-native"),
        ),
        Variant(
            "input-activation",
            "SiLU before the input projection",
            architecture=ArchitectureOptions(input_activation="silu"),
        ),
        Variant(
            "time-mlp-width",
            "timestep MLP width = feature size",
            architecture=ArchitectureOptions(time_mlp_width="features"),
        ),
        Variant("sampler", "released DDIM variant from t = 4", scoring=ScoringOptions(sampler="official", timestep=4)),
        Variant("ddim-t4", "(control) our DDIM, 1 step from t = 4", scoring=ScoringOptions(timestep=4)),
        Variant("mfsim-stages", "MFsim without stage 1", scoring=ScoringOptions(mfsim_stages="without-first")),
        Variant("training", "released training settings, same epochs", training=official_training),
        Variant(
            "official",
            "whole official preset, same epochs",
            official.features,
            official.architecture,
            official.scoring,
            official_training,
        ),
    ]


class FeatureStore:
    """Training and evaluation features per feature-option set, extracted once each."""

    def __init__(self, train_images, input_size: int) -> None:
        self.train_images, self.input_size = train_images, input_size
        self._sets: dict[FeatureOptions, tuple] = {}

    def same_as_paper(self, options: FeatureOptions) -> bool:
        """True when `options` gave bit-identical features to the paper preset's on every set."""
        mine, paper = self.get(options), self.get(FeatureOptions())
        same = torch.equal(mine[0].features, paper[0].features) and torch.equal(mine[1], paper[1])
        return same and all(torch.equal(mine[2][spec], paper[2][spec]) for spec in OOD_SETS)

    def get(self, options: FeatureOptions) -> tuple:
        """(training FeatureSet, ID features, {OOD set: features}, extraction seconds) for `options`."""
        if options not in self._sets:
            started = time.perf_counter()
            extractor = create_feature_extractor(BACKBONE, options=options)
            train_set = extract_features(extractor, self.train_images, self.input_size)

            def features_of(spec: str) -> torch.Tensor:
                # Extracted here, not read from the shared cache: every variant's features then come from the same
                # code and batching, so "identical to the paper preset's" can be checked bit for bit.
                return extract_features(extractor, open_dataset(spec), self.input_size).features

            evaluation = features_of(ID_SET), {spec: features_of(spec) for spec in OOD_SETS}
            self._sets[options] = (train_set, *evaluation, time.perf_counter() - started)
        return self._sets[options]


def train_model(
    store: FeatureStore, variant: Variant, budget: TrainingOptions, width: int, depth: int, run_root: Path
) -> tuple[Path, float]:
    """Train (or reuse) the model of `variant`; returns its run directory and training seconds (0 when reused)."""
    training = variant.training or budget
    features = FeatureOptions() if store.same_as_paper(variant.features) else variant.features
    train_set = store.get(features)[0]
    dim = train_set.features.shape[1]
    model_config = LFDNConfig(
        feature_dim=dim,
        width=width,
        depth=depth,
        input_activation=variant.architecture.input_activation,
        time_embed_width=time_embed_width(variant.architecture.time_mlp_width, width, dim),
    )
    tag = json.dumps([asdict(features), asdict(model_config), asdict(training), variant.seed], sort_keys=True)
    run_dir = run_root / f"model-{hashlib.sha256(tag.encode()).hexdigest()[:16]}"
    if (run_dir / "last.safetensors").exists() and (run_dir / "tag.json").read_text() == tag:
        return run_dir, 0.0
    started = time.perf_counter()
    train(
        train_set.features,
        run_dir,
        model_config,
        TrainConfig(**asdict(training), seed=variant.seed),
        Provenance(BACKBONE, "pretrained", store.input_size, train_set.stage_dims, store.train_images.name),
        resume=False,
    )
    (run_dir / "tag.json").write_text(tag)
    return run_dir, time.perf_counter() - started


def run_variant(store, variant, budget, width, depth, run_root) -> dict:
    """AUROC (%) of every score on every OOD set for one variant."""
    _, id_features, ood_features, extract_seconds = store.get(variant.features)
    run_dir, train_seconds = train_model(store, variant, budget, width, depth, run_root)
    detector = Detector.load(run_dir, device="cpu", scoring=variant.scoring)
    report = evaluate(
        detector, ID_SET, id_features, ood_features, EvaluationSettings(timestep=variant.scoring.timestep)
    )
    scores = [score for score in SCORES if score in report.score_names]  # no LR after a single epoch
    auroc = {score: {spec: 100 * report.metric(spec, score).auroc for spec in OOD_SETS} for score in scores}
    return {
        "name": variant.name,
        "item": variant.item,
        "features_identical_to_paper": variant.features != FeatureOptions() and store.same_as_paper(variant.features),
        "auroc": auroc,
        "average": {score: float(np.mean(list(auroc[score].values()))) for score in scores},
        "train_seconds": train_seconds,
        "extract_seconds": extract_seconds,
        "score_images_per_second": report.score_images_per_second,
    }


def markdown(rows: list[dict], header: str) -> str:
    """Per-variant AUROC change against the paper row, per OOD set, for MFsim and MSE (and LR's average)."""
    base = rows[0]
    short = [spec.removeprefix("demo:").replace("fashion_mnist_", "fm-") for spec in OOD_SETS]
    lines = [header, ""]
    for score in ("mfsim", "mse"):
        lines += [
            f"**{score.upper()}**: AUROC of the paper preset, then the change (points) with one item switched on",
            "",
            "| variant | " + " | ".join(short) + " | average | LR average |",
            "|---|" + "---|" * (len(short) + 2),
        ]
        for row in rows:
            if row is base:
                cells = [f"{row['auroc'][score][spec]:.2f}" for spec in OOD_SETS]
                cells += [f"{row['average'][score]:.2f}", f"{row['average']['lr']:.2f}"]
            else:
                cells = [f"{row['auroc'][score][spec] - base['auroc'][score][spec]:+.2f}" for spec in OOD_SETS]
                cells += [
                    f"{row['average'][score] - base['average'][score]:+.2f}",
                    f"{row['average']['lr'] - base['average']['lr']:+.2f}",
                ]
            lines.append(f"| {row['item']} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-count", type=int, default=10_000, help="balanced Fashion-MNIST training subset")
    parser.add_argument("--epochs", type=int, default=15, help="the same for every variant")
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--input-size", type=int, default=64)
    parser.add_argument("--only", nargs="*", default=None, help="run only these variants (and the paper baseline)")
    parser.add_argument("--runs", default="/tmp/dlsr-official-ablation", help="where the trained models go")
    parser.add_argument("--out", default=None, help="folder for official_ablation.{json,md}")
    args = parser.parse_args(argv)
    budget = replace(PRESETS["paper"].training, epochs=args.epochs)
    store = FeatureStore(BalancedSubset(open_dataset("fashion_mnist:train"), args.train_count), args.input_size)
    chosen = [v for v in variants(args.epochs) if args.only is None or v.name in {"paper", *args.only}]
    started = time.perf_counter()
    rows = []
    for variant in chosen:
        rows.append(run_variant(store, variant, budget, args.width, args.depth, Path(args.runs)))
        summary = {score: round(value, 2) for score, value in rows[-1]["average"].items()}
        print(f"{variant.name:<18} average AUROC {summary}  train {rows[-1]['train_seconds']:.0f} s", flush=True)
    setting = (
        f"{BACKBONE} @ {args.input_size} px, LFDN {args.width} x {args.depth}, {len(store.train_images)} Fashion-MNIST "
        f"training images, {args.epochs} epochs, batch {budget.batch_size}, paper optimiser settings (lr "
        f"{budget.learning_rate}, EMA {budget.ema_decay}) unless the row says otherwise; scored at t = 5 with 1 DDIM "
        "step unless the row says otherwise, seed 0"
    )
    result = {
        "command": "python -m benchmarks.official_ablation " + " ".join(sys.argv[1:] if argv is None else argv),
        "setting": setting,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads",
        "total_seconds": time.perf_counter() - started,
        "rows": rows,
    }
    text = markdown(rows, f"Setting: {setting}. ID: {ID_SET}.")
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "official_ablation.json").write_text(json.dumps(result, indent=2))
        (out / "official_ablation.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
