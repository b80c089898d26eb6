"""The shipped model's sweep, staged, with the validation protocol (benchmarks/protocol.py); resumable.

    python -m benchmarks.sweep --stage features   # 1: backbone x input size, fixed LFDN on every 5th fit image
    python -m benchmarks.sweep --stage lfdn       # 2: LFDN width x depth x epochs on stage 1's features, all fit
    python -m benchmarks.sweep --stage scoring    # 3: timestep / DDIM steps of the chosen model, and k of k-NN
    python -m benchmarks.sweep --stage seeds      # the chosen setting with training seeds 1 and 2 (seed 0: stage 2)
    python -m benchmarks.sweep --stage report     # test AUROC of every row, after every choice; sweep.{json,md}
    python -m benchmarks.sweep --stage ship       # copy the chosen model to checkpoints/default

Each stage chooses on validation data only (protocol.choose reads sets through a guard that refuses test sets) and
stores its rows and choice in benchmarks/results/sweep.json; models go to runs/sweep/ (a finished run is reused).
Constraints: upload scoring >= 200 images/s (one torch thread, images per CPU-second of decoding, backbone and
MFsim scoring in batches of 8, as uploads are scored: a measure that other jobs on the machine barely move) and, for
the LFDN, first + last checkpoint in float16 within MAX_DEFAULT_MB. Run with `nice`; torch uses one thread.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from benchmarks.protocol import FIT_SET, TEST_ID, TEST_OOD, VALIDATION_ID, VALIDATION_OOD, choose, group_aurocs
from dlsr_core.checkpoint import FIRST_NAME, LAST_NAME, checksum_path, read_checkpoint_info
from dlsr_core.diffusion import LFDNConfig
from dlsr_core.scoring import Detector
from dlsr_core.training import Provenance, TrainConfig, train

RESULTS = Path("benchmarks/results/sweep.json")
RUNS = Path("runs/sweep")
MIN_IMAGES_PER_SECOND = 200.0
MAX_DEFAULT_MB = 32.0  # checkpoints/ <= 45 MB: baselines ~5-8 MB and the held-out-class model ~2 MB besides
TRAINING = {"learning_rate": 3e-4, "batch_size": 256, "ema_decay": 0.999, "half_precision_checkpoints": True}
STAGE1_EVERY = 5  # stage 1 trains on every 5th fit image (11,000)


@dataclass(frozen=True)
class FeatureCandidate:
    backbone: str
    input_size: int

    def label(self) -> str:
        return f"{self.backbone} @ {self.input_size} px"


@dataclass(frozen=True)
class LFDNCandidate:
    width: int
    depth: int
    epochs: int

    def label(self) -> str:
        return f"LFDN {self.width} x {self.depth}, {self.epochs} epochs"


@dataclass(frozen=True)
class ScoringCandidate:
    timestep: int
    steps: int | None  # None: one DDIM step per timestep

    def label(self) -> str:
        return f"t = {self.timestep}, {'t' if self.steps is None else self.steps} DDIM step(s)"


STAGE1 = tuple(
    FeatureCandidate(b, s)
    for b, s in (
        ("efficientnet_lite0", 64),
        ("efficientnet_lite0", 80),
        ("efficientnet_lite0", 96),
        ("efficientnet_lite1", 64),
        ("efficientnet_lite1", 80),
        ("efficientnet_lite2", 64),
        ("efficientnet_lite2", 80),
    )
)
STAGE1_LFDN = LFDNCandidate(512, 6, 10)
STAGE2_SHAPES = ((512, 6), (512, 8), (576, 6))  # 23, 29.5 and 29 MB as first + last in float16
STAGE2_EPOCHS = (10, 20)
STAGE3 = tuple(ScoringCandidate(t, 1) for t in (2, 3, 5, 8, 10)) + (ScoringCandidate(5, None),)
KNN_KS = (1, 5, 10, 20, 50, 100, 200)
DEFAULT_SCORING = ScoringCandidate(5, 1)
# Stage 3 keeps the paper preset's t = 5 with one step (what every page opens at) unless another setting beats it on
# validation by more than this: 0.1 point of AUROC, the size of the differences retraining with another seed makes.
SCORING_MARGIN = 0.001


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def feature_source(name: str, backbone: str, input_size: int):
    """The FeatureSet of dataset `name` under a backbone and input size (from the feature cache, extracted once)."""
    from dlsr_core.cache import cached_features

    return cached_features(name, backbone, input_size=input_size)


def train_lfdn(
    run_dir: Path, features: torch.Tensor, stage_dims, shape: LFDNCandidate, where: FeatureCandidate, seed: int = 0
) -> Path:
    """Train (or continue to `shape.epochs`) an LFDN in `run_dir` on features (N, D); a finished run is reused."""
    last = run_dir / LAST_NAME
    if last.is_file() and read_checkpoint_info(last).epoch >= shape.epochs:
        return run_dir
    log(f"training {shape.label()} (seed {seed}) on {len(features)} {where.label()} features -> {run_dir}")
    started = time.perf_counter()
    train(
        features,
        run_dir,
        LFDNConfig(feature_dim=features.shape[1], width=shape.width, depth=shape.depth),
        TrainConfig(epochs=shape.epochs, seed=seed, checkpoint_every=shape.epochs, **TRAINING),
        Provenance(where.backbone, "pretrained", where.input_size, tuple(stage_dims), FIT_SET),
    )
    log(f"  trained in {time.perf_counter() - started:.0f} s")
    return run_dir


def mfsim(detector: Detector, features: torch.Tensor, scoring: ScoringCandidate = DEFAULT_SCORING) -> np.ndarray:
    """MFsim scores (N,) of features (N, D), seed 0, one draw."""
    return detector.score_features(features, t=scoring.timestep, steps=scoring.steps, with_lr=False).mfsim


def set_scores(score, source, where: FeatureCandidate, id_set: str, ood_sets) -> tuple[np.ndarray, dict]:
    """(ID scores, {OOD set: scores}) of `score(features)` on the sets, features read through `source`."""
    read = lambda name: score(source(name, where.backbone, where.input_size).features)  # noqa: E731
    return read(id_set), {name: read(name) for name in ood_sets}


def upload_images_per_second(detector: Detector, count: int = 192, batch: int = 8) -> float:
    """Upload scoring speed as the app scores uploads: images per CPU-second on one torch thread (the app's
    DLSR_TORCH_THREADS default on 2 cores), from decoded validation images to MFsim in batches of 8 (decoding to RGB,
    preprocessing, backbone, one reconstruction)."""
    from dlsr_core.backbones import create_feature_extractor
    from dlsr_core.data import open_dataset

    dataset = open_dataset(VALIDATION_ID)
    images = [dataset[i] for i in range(count)]
    extractor = create_feature_extractor(detector.backbone, detector.backbone_weights())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        mfsim(detector, extractor(extractor.preprocess(images[:batch], detector.input_size)))  # warm-up
        started = time.process_time()
        for i in range(0, count, batch):
            chunk = [image.convert("RGB") for image in images[i : i + batch]]
            mfsim(detector, extractor(extractor.preprocess(chunk, detector.input_size)))
        return count / (time.process_time() - started)
    finally:
        torch.set_num_threads(threads)


SPEED_ROUNDS = 3
_REFERENCE = "reference"


class SpeedBoard:
    """Upload speeds of a stage's candidates, measured side by side once all are trained: SPEED_ROUNDS rounds, each
    measuring every architecture in turn, and the median per architecture (one-off measurements on the shared
    machine moved by up to 25 %). Candidates that differ only in training (epochs) share one architecture and one
    measurement. Run it with none of your other jobs running.

    The machine's load still moves every reading (by about 20 % between stages here), so a later stage measures a
    `reference` architecture of an earlier stage in the same rounds and scales every median by (the reference's
    speed in that stage) / (its median now): all stages' speeds are then on the first stage's footing."""

    def __init__(self, reference: tuple[Detector, float] | None = None) -> None:
        self.detectors: dict[object, Detector] = {}  # architecture -> a detector of it
        self.architecture: dict[object, object] = {}  # candidate -> architecture
        self.reference = reference
        self.scale = 1.0
        self._speeds: dict[object, float] | None = None

    def add(self, candidate: object, detector: Detector, architecture: object | None = None) -> None:
        key = candidate if architecture is None else architecture
        self.architecture[candidate] = key
        self.detectors.setdefault(key, detector)
        self._speeds = None

    def speeds(self) -> dict[object, float]:
        """Candidate -> median images per CPU-second of its architecture."""
        if self._speeds is None:
            log(f"measuring upload speed of {len(self.detectors)} architectures, {SPEED_ROUNDS} rounds")
            detectors = dict(self.detectors)
            if self.reference is not None:
                detectors[_REFERENCE] = self.reference[0]
            measured: dict[object, list[float]] = {key: [] for key in detectors}
            for _ in range(SPEED_ROUNDS):
                for key, detector in detectors.items():
                    measured[key].append(upload_images_per_second(detector))
            medians = {key: float(np.median(values)) for key, values in measured.items()}
            if self.reference is not None:
                self.scale = self.reference[1] / medians[_REFERENCE]
                log(f"reference measured at {medians[_REFERENCE]:.0f} images/s, {self.reference[1]:.0f} before")
            self._speeds = {candidate: self.scale * medians[key] for candidate, key in self.architecture.items()}
        return self._speeds


def checkpoint_mb(run_dir: Path) -> float:
    return sum((run_dir / name).stat().st_size for name in (FIRST_NAME, LAST_NAME)) / 1e6


def load_results() -> dict:
    return json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}


def save_results(results: dict, stages: tuple[str, ...]) -> dict:
    """Write `stages` of `results` into the results file, keeping every other stage as the file has it now (stages
    run in parallel processes each add their own); returns the merged results."""
    from dlsr_core.atomic import atomic_write_bytes

    merged = {**load_results(), **{stage: results[stage] for stage in stages if stage in results}}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(RESULTS, (json.dumps(merged, indent=2) + "\n").encode())
    return merged


def stage1_run(where: FeatureCandidate) -> Path:
    return RUNS / "stage1" / f"{where.backbone}_{where.input_size}"


def run_stage1(source=feature_source) -> dict:
    """Backbone x input size with a fixed LFDN trained on every 5th fit image; returns the stage's record."""
    speeds: dict[FeatureCandidate, float] = {}

    def validation_scores(where: FeatureCandidate, guarded):
        fit = guarded(FIT_SET, where.backbone, where.input_size)
        run = train_lfdn(stage1_run(where), fit.features[::STAGE1_EVERY], fit.stage_dims, STAGE1_LFDN, where)
        detector = Detector.load(run, device="cpu")
        speeds[where] = upload_images_per_second(detector)
        return set_scores(lambda f: mfsim(detector, f), guarded, where, VALIDATION_ID, VALIDATION_OOD)

    choice = choose(STAGE1, validation_scores, source, eligible=lambda where: speeds[where] >= MIN_IMAGES_PER_SECOND)
    return {
        "rows": [
            {"setting": asdict(c), "label": c.label(), "validation": v, "images_per_second": speeds[c], "eligible": e}
            for c, v, e in zip(choice.candidates, choice.validation, choice.eligible, strict=True)
        ],
        "chosen": asdict(choice.best),
        "opened": list(dict.fromkeys(choice.opened)),
    }


def stage2_run(shape: LFDNCandidate, seed: int = 0) -> Path:
    """A stage-2 run folder; the shorter epoch counts are snapshots taken on the way (constant learning rate, so the
    snapshot at epoch 10 of a 20-epoch run is the 10-epoch run)."""
    folder = RUNS / "stage2" / (f"{shape.width}x{shape.depth}" + ("" if seed == 0 else f"_seed{seed}"))
    return folder if shape.epochs == max(STAGE2_EPOCHS) else folder.with_name(f"{folder.name}_e{shape.epochs}")


def train_stage2(where: FeatureCandidate, features, stage_dims, width: int, depth: int, seed: int = 0) -> None:
    """Train width x depth to each of STAGE2_EPOCHS in turn, snapshotting the run at every count but the last."""
    final = stage2_run(LFDNCandidate(width, depth, max(STAGE2_EPOCHS)), seed)
    for epochs in sorted(STAGE2_EPOCHS):
        shape = LFDNCandidate(width, depth, epochs)
        snapshot = stage2_run(shape, seed)
        if snapshot != final and (snapshot / LAST_NAME).is_file():
            continue
        train_lfdn(final, features, stage_dims, shape, where, seed)  # continues the run when it has fewer epochs
        if snapshot != final:
            snapshot.mkdir(parents=True, exist_ok=True)
            for name in (FIRST_NAME, LAST_NAME):
                for path in (final / name, checksum_path(final / name)):
                    if path.is_file():
                        shutil.copy2(path, snapshot / path.name)


def run_stage2(where: FeatureCandidate, source=feature_source, reference_speed: float | None = None) -> dict:
    """LFDN width x depth x epochs on the full fit set, with stage 1's backbone and input size. `reference_speed`:
    stage 1's speed of its chosen model, measured again here to put both stages' speeds on one footing."""
    candidates = tuple(LFDNCandidate(w, d, e) for w, d in STAGE2_SHAPES for e in STAGE2_EPOCHS)
    reference = None
    if reference_speed is not None:
        reference = (Detector.load(stage1_run(where), device="cpu"), reference_speed)
    board = SpeedBoard(reference)
    sizes: dict[LFDNCandidate, float] = {}

    def validation_scores(shape: LFDNCandidate, guarded):
        fit = guarded(FIT_SET, where.backbone, where.input_size)
        train_stage2(where, fit.features, fit.stage_dims, shape.width, shape.depth)
        detector = Detector.load(stage2_run(shape), device="cpu")
        board.add(shape, detector, architecture=(shape.width, shape.depth))
        sizes[shape] = checkpoint_mb(stage2_run(shape))
        return set_scores(lambda f: mfsim(detector, f), guarded, where, VALIDATION_ID, VALIDATION_OOD)

    def eligible(shape: LFDNCandidate) -> bool:
        return board.speeds()[shape] >= MIN_IMAGES_PER_SECOND and sizes[shape] <= MAX_DEFAULT_MB

    choice = choose(candidates, validation_scores, source, eligible)
    speeds = board.speeds()
    return {
        "features": asdict(where),
        "speed_scale": board.scale,
        "rows": [
            {
                "setting": asdict(c),
                "label": c.label(),
                "validation": v,
                "images_per_second": speeds[c],
                "checkpoint_mb": sizes[c],
                "eligible": e,
            }
            for c, v, e in zip(choice.candidates, choice.validation, choice.eligible, strict=True)
        ],
        "chosen": asdict(choice.best),
        "opened": list(dict.fromkeys(choice.opened)),
    }


def run_stage3(where: FeatureCandidate, shape: LFDNCandidate, source=feature_source) -> dict:
    """Timestep and DDIM steps of the chosen model, then k of k-NN on the same features (fitted on the fit set)."""
    from dlsr_core.baselines import KNNBaseline

    detector = Detector.load(stage2_run(shape), device="cpu")
    choice = choose(
        STAGE3,
        lambda scoring, guarded: set_scores(
            lambda f: mfsim(detector, f, scoring), guarded, where, VALIDATION_ID, VALIDATION_OOD
        ),
        source,
        default=DEFAULT_SCORING,
        margin=SCORING_MARGIN,
    )

    def knn_scores(k: int, guarded):
        fitted = KNNBaseline(k).fit(guarded(FIT_SET, where.backbone, where.input_size).features)
        return set_scores(fitted.score, guarded, where, VALIDATION_ID, VALIDATION_OOD)

    knn = choose(KNN_KS, knn_scores, source)
    knn_rows = [{"k": k, "validation": v} for k, v in zip(knn.candidates, knn.validation, strict=True)]
    return {
        "rows": [
            {"setting": asdict(c), "label": c.label(), "validation": v}
            for c, v in zip(choice.candidates, choice.validation, strict=True)
        ],
        "chosen": asdict(choice.best),
        "knn_rows": knn_rows,
        "knn_k": knn.best,
        "opened": list(dict.fromkeys(choice.opened + knn.opened)),
    }


SEEDS = (0, 1, 2)
STAGE_KEYS = {"features": "features", "lfdn": "lfdn", "scoring": "scoring", "seeds": "seeds"}


def seed_run(shape: LFDNCandidate, seed: int) -> Path:
    """Seed 0 is the stage-2 run itself; the others train the same setting from another seed."""
    return (
        stage2_run(shape) if seed == 0 else RUNS / "seeds" / f"{shape.width}x{shape.depth}_e{shape.epochs}_seed{seed}"
    )


def feature_ae_seed_path(seed: int) -> Path:
    return RUNS / "seeds" / f"feature_ae_seed{seed}.safetensors"


def run_seeds(where: FeatureCandidate, shape: LFDNCandidate, source=feature_source) -> dict:
    """Train the chosen LFDN setting with every seed of SEEDS, and the feature autoencoder (cheap) with the same
    seeds, all on the fit set; returns the run folders and autoencoder files."""
    from dlsr_core.baselines import feature_ae

    fit = source(FIT_SET, where.backbone, where.input_size)
    for seed in SEEDS[1:]:
        train_lfdn(seed_run(shape, seed), fit.features, fit.stage_dims, shape, where, seed)
    for seed in SEEDS:
        path = feature_ae_seed_path(seed)
        if not path.is_file():
            log(f"training the feature autoencoder, seed {seed}")
            config = feature_ae.AutoencoderConfig(feature_dim=fit.features.shape[1])
            model = feature_ae.train_feature_ae(fit.features, config, feature_ae.AutoencoderTrainConfig(seed=seed))
            path.parent.mkdir(parents=True, exist_ok=True)
            model.save(path)
    return {
        "dlsr": [str(seed_run(shape, seed)) for seed in SEEDS],
        "feature_ae": [str(feature_ae_seed_path(seed)) for seed in SEEDS],
    }


def test_aurocs(score, where: FeatureCandidate, source=feature_source) -> dict[str, float]:
    """Test-table AUROCs of `score(features)`: per set, far, near and their mean. Only called after the choices."""
    id_scores, ood_scores = set_scores(score, source, where, TEST_ID, TEST_OOD)
    return group_aurocs(id_scores, ood_scores, TEST_OOD)


def report(results: dict, source=feature_source) -> dict:
    """Adds test AUROCs to every row of every finished stage (the choices are already stored) and the seeds'."""
    if "features" in results:
        for row in results["features"]["rows"]:
            where = FeatureCandidate(**row["setting"])
            detector = Detector.load(stage1_run(where), device="cpu")
            row["test"] = test_aurocs(lambda f, d=detector: mfsim(d, f), where, source)
    where = FeatureCandidate(**results["features"]["chosen"]) if "features" in results else None
    if "lfdn" in results:
        for row in results["lfdn"]["rows"]:
            detector = Detector.load(stage2_run(LFDNCandidate(**row["setting"])), device="cpu")
            row["test"] = test_aurocs(lambda f, d=detector: mfsim(d, f), where, source)
    if "scoring" in results:
        shape = LFDNCandidate(**results["lfdn"]["chosen"])
        detector = Detector.load(stage2_run(shape), device="cpu")
        for row in results["scoring"]["rows"]:
            scoring = ScoringCandidate(**row["setting"])
            row["test"] = test_aurocs(lambda f, s=scoring: mfsim(detector, f, s), where, source)
    return results


SHIPPED = Path("checkpoints/default")


def ship(results: dict, out: Path = SHIPPED) -> Path:
    """Copy the chosen model (stage 2's seed-0 run) to `out`, recording stage 3's timestep as its scoring default
    (the weights are re-saved unchanged: float16 in, float16 out)."""
    from dataclasses import replace

    from dlsr_core.checkpoint import load_checkpoint, save_checkpoint

    run = stage2_run(LFDNCandidate(**results["lfdn"]["chosen"]))
    timestep = results.get("scoring", {}).get("chosen", {}).get("timestep", DEFAULT_SCORING.timestep)
    out.mkdir(parents=True, exist_ok=True)
    for name in (FIRST_NAME, LAST_NAME):
        loaded = load_checkpoint(run / name)
        info = replace(loaded.info, timestep=timestep)
        save_checkpoint(out / name, loaded.model, info, loaded.feature_mean, loaded.feature_std, half_precision=True)
    log(f"shipped {run} to {out} (scoring timestep {timestep})")
    return out


def _percent(value: float | None) -> str:
    return "–" if value is None or np.isnan(value) else f"{100 * value:.2f}"


def stage_markdown(title: str, stage: dict, extra: tuple[str, ...] = ()) -> list[str]:
    """One stage's table: setting, validation AUROC (far / near / objective), test AUROC (far / near), extras."""
    chosen = stage["chosen"]
    head = "| setting | val far | val near | **val objective** | test far | test near |"
    lines = [f"### {title}", "", head + "".join(f" {e} |" for e in extra), "|---" * (6 + len(extra)) + "|"]
    for row in stage["rows"]:
        val, test = row["validation"], row.get("test", {})
        mark = " **(chosen)**" if row["setting"] == chosen else ("" if row.get("eligible", True) else " (over a limit)")
        cells = [
            f"{row['label']}{mark}",
            _percent(val["far"]),
            _percent(val["near"]),
            f"**{_percent(val['objective'])}**",
        ]
        cells += [_percent(test.get("far")), _percent(test.get("near"))]
        for key in extra:
            value = row.get({"img/s": "images_per_second", "MB": "checkpoint_mb"}[key])
            cells.append("–" if value is None else f"{value:.0f}" if key == "img/s" else f"{value:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def markdown(results: dict) -> str:
    lines = [
        "# The shipped model's sweep (validation protocol)",
        "",
        "Chosen on validation data only (ID `fashion_mnist:val`; OOD: `shapes` far, `fashion_mnist:val+rollx` and "
        "`+rolly` near; objective = mean of the far and near AUROC). Test columns (demo sets of the README's table) "
        "were computed after every choice was stored and were not used to choose. AUROC in %, DLSR MFsim, seed 0, "
        "one noise draw. img/s: upload scoring (decoding, backbone, one reconstruction) in images per CPU-second on "
        "one torch thread, batches of 8; limit 200. MB: first + last checkpoint in float16; limit "
        f"{MAX_DEFAULT_MB:.0f}.",
        "",
    ]
    if "features" in results:
        lines += stage_markdown(
            f"Stage 1: backbone x input size (LFDN {STAGE1_LFDN.width} x {STAGE1_LFDN.depth}, {STAGE1_LFDN.epochs} "
            f"epochs on every {STAGE1_EVERY}th fit image)",
            results["features"],
            ("img/s",),
        )
    if "lfdn" in results:
        lines += stage_markdown("Stage 2: LFDN on all 55,000 fit images", results["lfdn"], ("img/s", "MB"))
    if "scoring" in results:
        lines += stage_markdown("Stage 3: timestep and DDIM steps of the chosen model", results["scoring"])
        lines += [
            f"t = 5 with one step (the paper preset's, what the pages open at) is kept unless another setting beats it "
            f"on validation by more than {100 * SCORING_MARGIN:.1f} point.",
            "",
        ]
        knn = " · ".join(
            f"k = {row['k']}: {_percent(row['validation']['objective'])}" for row in results["scoring"]["knn_rows"]
        )
        lines += [
            f"k-NN on the same features, validation objective: {knn}; chosen k = {results['scoring']['knn_k']}.",
            "",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", choices=("features", "lfdn", "scoring", "seeds", "report", "ship"), required=True)
    parser.add_argument(
        "--train-only",
        metavar="WIDTHxDEPTH",
        default=None,
        help="with --stage lfdn: only train that shape's runs (to train several in parallel processes), choose nothing",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = load_results()
    if args.stage == "features":
        results["features"] = run_stage1()
    else:
        if "features" not in results:
            parser.error("run --stage features first")
        where = FeatureCandidate(**results["features"]["chosen"])
        if args.stage == "lfdn" and args.train_only:
            width, depth = (int(part) for part in args.train_only.lower().split("x"))
            fit = feature_source(FIT_SET, where.backbone, where.input_size)
            train_stage2(where, fit.features, fit.stage_dims, width, depth)
            return
        if args.stage == "lfdn":
            stage1 = next(row for row in results["features"]["rows"] if row["setting"] == results["features"]["chosen"])
            results["lfdn"] = run_stage2(where, reference_speed=stage1["images_per_second"])
        elif "lfdn" not in results:
            parser.error("run --stage lfdn first")
        elif args.stage == "scoring":
            results["scoring"] = run_stage3(where, LFDNCandidate(**results["lfdn"]["chosen"]))
        elif args.stage == "seeds":
            results["seeds"] = run_seeds(where, LFDNCandidate(**results["lfdn"]["chosen"]))
        elif args.stage == "ship":
            ship(results)
            return
        else:
            results = report(results)
            Path(RESULTS.with_suffix(".md")).write_text(markdown(results) + "\n")
    stages = tuple(results) if args.stage == "report" else (STAGE_KEYS[args.stage],)
    print(markdown(save_results(results, stages)))


if __name__ == "__main__":
    main()
