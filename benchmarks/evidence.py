"""The evidence, in one command: validation-chosen settings, the test table with bootstrap intervals, mean +- std over
training seeds, the held-out-class benchmark and images/s per method; prints and writes evidence.{md,json}.

    python -m benchmarks.evidence --out benchmarks/results          # about 15-30 min on 2 cores
    python -m benchmarks.evidence --subset 60 --out /tmp/evidence   # a few images per set: a smoke run

It reads models trained by separate commands (each documented in the README): the shipped model and its sweep
(`python -m benchmarks.sweep --stage ...`, which also trains the seed runs), the baselines (`python -m
dlsr_core.baselines.train`) and the held-out-class models (`python -m benchmarks.heldout --stage train|baselines`).
Nothing here chooses a setting: every choice was made on validation data by the sweep and is read from
benchmarks/results/sweep.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks import heldout
from benchmarks.protocol import FIT_SET, TEST_ID, TEST_OOD, VALIDATION_ID
from benchmarks.sweep import RESULTS as SWEEP_RESULTS
from dlsr_core.checkpoint import DEFAULT_RUN_DIR
from dlsr_core.evaluation import EvaluationSettings
from dlsr_core.metrics import FPR95_CONVENTION, bootstrap_aurocs, mean_std, ood_metrics
from dlsr_core.scoring import Detector

RESAMPLES = 1000
SPEED_IMAGES = 256
GROUPS = ("far", "near", "all")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def chosen(sweep: dict) -> EvaluationSettings:
    """The scoring settings the sweep chose on validation (defaults where a stage has not run)."""
    scoring = sweep.get("scoring", {})
    choice = scoring.get("chosen", {"timestep": 5, "steps": 1})
    return EvaluationSettings(timestep=choice["timestep"], steps=choice["steps"], knn_k=scoring.get("knn_k", 50))


def group_members(groups: dict[str, str], group: str) -> tuple[str, ...]:
    return tuple(name for name, kind in groups.items() if group == "all" or kind == group)


def summarize(id_scores: np.ndarray, ood_scores: dict[str, np.ndarray], groups: dict[str, str], seed: int) -> dict:
    """AUROC with its bootstrap 95 % interval and FPR95 per OOD set, and the interval of each group's average.

    The resamples depend only on the seed and the set sizes, so every method scored on the same images gets the same
    resamples: "_replicates" (each group's average per resample, not written to JSON) gives paired differences."""
    boot = bootstrap_aurocs(id_scores, ood_scores, RESAMPLES, seed)
    result: dict = {"_replicates": {}}
    for name in ood_scores:
        estimate, low, high = boot.interval((name,))
        result[name] = {
            "auroc": estimate,
            "low": low,
            "high": high,
            "fpr95": ood_metrics(id_scores, ood_scores[name]).fpr95,
        }
    for group in GROUPS:
        members = tuple(name for name in group_members(groups, group) if name in ood_scores)
        if members:
            estimate, low, high = boot.interval(members)
            fpr = float(np.mean([result[name]["fpr95"] for name in members]))
            result[group] = {"auroc": estimate, "low": low, "high": high, "fpr95": fpr}
            columns = [boot.names.index(name) for name in members]
            result["_replicates"][group] = boot.replicates[:, columns].mean(axis=1)
    return result


def paired_difference(first: dict, second: dict, group: str) -> tuple[float, float, float]:
    """(difference, low, high) of two methods' group-average AUROC on the same resamples (95 % interval)."""
    difference = first["_replicates"][group] - second["_replicates"][group]
    low, high = np.percentile(difference, [2.5, 97.5])
    return first[group]["auroc"] - second[group]["auroc"], float(low), float(high)


def test_inputs(detector: Detector, specs: list[str], subset: int | None):
    from dlsr_core.comparison import load_inputs

    return load_inputs(detector, specs, limit=subset)


def main_table(detector: Detector, settings: EvaluationSettings, baselines_dir: Path, subset: int | None) -> dict:
    """Every available method on the test table, with intervals; returns {method: summary} plus notes and speed."""
    from dlsr_core.cache import cached_features
    from dlsr_core.comparison import Baselines, end_to_end_images_per_second, score_methods

    train = cached_features(FIT_SET, detector.backbone, input_size=detector.input_size).features
    baselines = Baselines.load(baselines_dir, distance_train=train)
    notes = [f"k-NN (k = {settings.knn_k}) and Mahalanobis fitted on the {len(train)} fit-set features"]
    notes += [f"{kind} unavailable: {why}" for kind, why in baselines.problems.items()]
    methods = baselines.available(detector)
    inputs = test_inputs(detector, [TEST_ID, *TEST_OOD], subset)
    log(f"scoring {', '.join(methods)} on the test table")
    results = score_methods(methods, inputs, detector, baselines, settings)
    table = {
        name: summarize(result.scores[TEST_ID], {s: result.scores[s] for s in TEST_OOD}, TEST_OOD, settings.seed)
        for name, result in results.items()
    }
    from dlsr_core.data import open_dataset

    dataset = open_dataset(VALIDATION_ID)
    images = [dataset[i] for i in range(SPEED_IMAGES if subset is None else min(subset, 64))]
    log("end-to-end speed per method")
    speed = end_to_end_images_per_second(methods, images, detector, baselines, settings)
    return {"methods": table, "images_per_second": speed, "notes": notes}


def seed_table(seeds: dict, settings: EvaluationSettings, subset: int | None) -> dict:
    """AUROC per test set and group for each training seed's model, and their mean and std: the DLSR scores of each
    LFDN seed, and the feature autoencoder of each seed (scored on the first seed model's features)."""
    from dlsr_core.baselines.feature_ae import FeatureAEBaseline

    per_seed: dict[str, list[dict]] = {"mse": [], "mfsim": [], "lr": [], "feature_ae": []}
    for run in seeds["dlsr"]:
        detector = Detector.load(run, device="cpu")
        inputs = test_inputs(detector, [TEST_ID, *TEST_OOD], subset)
        scores = {
            name: detector.score_features(s.features, settings.timestep, settings.steps) for name, s in inputs.items()
        }
        for score in ("mse", "mfsim", "lr"):
            per_seed[score].append(group_aurocs_of({name: scores[name].get(score) for name in scores}))
    for path in seeds.get("feature_ae", []):
        model = FeatureAEBaseline.load(path)
        per_seed["feature_ae"].append(group_aurocs_of({name: model.score(s.features) for name, s in inputs.items()}))
    table: dict[str, dict] = {}
    for score, rows in per_seed.items():
        for key in rows[0] if rows else ():
            mean, std = mean_std([row[key] for row in rows])
            table.setdefault(score, {})[key] = {"mean": mean, "std": std}
    return {"runs": seeds, "per_seed": per_seed, "table": table}


def group_aurocs_of(scores: dict[str, np.ndarray]) -> dict[str, float]:
    """AUROC of every test OOD set and the far / near / all averages, from scores of the test table's sets."""
    aurocs = {name: ood_metrics(scores[TEST_ID], scores[name]).auroc for name in TEST_OOD}
    for group in GROUPS:
        aurocs[group] = float(np.mean([aurocs[n] for n in group_members(TEST_OOD, group)]))
    return aurocs


def heldout_table(settings: EvaluationSettings, subset: int | None) -> dict:
    """DLSR and the baselines trained on the known classes, against each held-out class (and far sets)."""
    from dlsr_core.baselines import KNNBaseline, MahalanobisBaseline

    detector = Detector.load(heldout.RUN_DIR, device="cpu")
    groups = {**heldout.OOD_TEST, **heldout.FAR_TEST}
    inputs = test_inputs(detector, [heldout.ID_TEST, *groups], subset)
    features = {name: s.features for name, s in inputs.items()}
    train, stage_dims = heldout.known_class_features(detector.backbone, detector.input_size)
    dlsr = {name: detector.score_features(f, settings.timestep, settings.steps) for name, f in features.items()}
    scorers = {
        f"DLSR {label}": (lambda name, k=key: dlsr[name].get(k))
        for key, label in (("mse", "MSE"), ("mfsim", "MFsim"), ("lr", "LR"))
    }
    knn = KNNBaseline(settings.knn_k).fit(train)
    mahalanobis = MahalanobisBaseline(tuple(stage_dims)).fit(train)
    scorers["k-NN"] = lambda name: knn.score(features[name])
    scorers["Mahalanobis"] = lambda name: mahalanobis.score(features[name])
    notes = [f"trained on {heldout.TRAIN_SET} ({len(train)} images); k-NN and Mahalanobis fitted on them"]
    extra, more_notes = heldout_baselines()
    for label, score in extra.items():
        scorers[label] = lambda name, f=score: f(inputs[name])
    table = {}
    for label, score in scorers.items():
        values = {name: score(name) for name in inputs}
        table[label] = summarize(values[heldout.ID_TEST], {n: values[n] for n in groups}, groups, settings.seed)
    return {"methods": table, "notes": notes + more_notes, "groups": groups}


CLASSIFIER_LABELS = {"msp": "MSP", "energy": "EBO", "dice": "DICE", "ash_s": "ASH-S", "react": "ReAct", "vim": "ViM"}


def heldout_baselines() -> tuple[dict, list[str]]:
    """Scorers (SetInputs -> scores) of the held-out baselines in heldout.BASELINES_DIR, and notes on missing ones."""
    from dlsr_core.baselines.feature_ae import FeatureAEBaseline

    scorers, notes = {}, []
    path = heldout.BASELINES_DIR / "feature_ae.safetensors"
    if path.is_file():
        autoencoder = FeatureAEBaseline.load(path)
        scorers["Feature AE"] = lambda s: autoencoder.score(s.features)
    else:
        notes.append(f"feature AE: {path} missing (python -m benchmarks.heldout --stage baselines)")
    path = heldout.BASELINES_DIR / "classifier.safetensors"
    if path.is_file():
        from dlsr_core.baselines.classifier import ClassifierBaselines

        model = ClassifierBaselines.load(path)
        for name, label in CLASSIFIER_LABELS.items():
            scorers[label] = lambda s, n=name: model.score(n, s.pixels)
    else:
        notes.append("classifier detectors: no classifier trained on the known classes (see benchmarks/heldout.py)")
    notes.append("pixel DDPM: not retrained on the known classes (CPU budget); see benchmarks/heldout.py")
    return scorers, notes


def _cell(entry: dict | None) -> str:
    """ "98.76 [98.51, 98.99]": AUROC and its 95 % interval, in %."""
    if entry is None:
        return "–"
    return f"{100 * entry['auroc']:.2f} [{100 * entry['low']:.2f}, {100 * entry['high']:.2f}]"


def settings_markdown(sweep: dict, pixel_levels: dict | None = None) -> list[str]:
    lines = ["| what | chosen | candidates |", "|---|---|---|"]
    labels = {"features": "backbone and input size", "lfdn": "LFDN width x depth, epochs", "scoring": "timestep, steps"}
    for stage, what in labels.items():
        if stage in sweep:
            rows = sweep[stage]["rows"]
            best = next(row["label"] for row in rows if row["setting"] == sweep[stage]["chosen"])
            lines.append(f"| {what} | **{best}** | {len(rows)} (benchmarks/results/sweep.md) |")
    if "scoring" in sweep:
        ks = ", ".join(str(row["k"]) for row in sweep["scoring"]["knn_rows"])
        lines.append(f"| k of k-NN | **{sweep['scoring']['knn_k']}** | {ks} |")
    if pixel_levels is not None:
        levels = ", ".join(map(str, pixel_levels["chosen"]["levels"]))
        count = len(pixel_levels["candidates"])
        lines.append(f"| pixel DDPM noise levels | **t = {levels}** | {count} (benchmarks/results/pixel_levels.md) |")
    return lines + [
        "",
        "Objective: mean of the far and near validation AUROC (DLSR MFsim; each method's own scores for k-NN's k and "
        "the pixel DDPM's levels).",
        "",
    ]


# The paper's average AUROC and GPU images/s for each method (CIFAR-10 as ID; Table 1 for the generative methods,
# Table 3 for the others), quoted beside ours: benchmarks/paper_results.json has every cell.
PAPER = {
    "mfsim": ("99.7 (T1) / 99.34 (T3)", "999.3"),
    "mse": ("98.8 / 96.93", "999.3"),
    "lr": ("98.5 / 97.61", "273.6"),
    "pixel_ddpm": ("78.2", "11.4"),
    "feature_ae": ("81.2", "1224.2"),
    "msp": ("94.74", "1060.5"),
    "energy": ("96.31", "1060.5"),
    "dice": ("97.44", "1066.3"),
    "ash_s": ("96.51", "1047.6"),
    "knn": ("92.67 (SimCLR+KNN)", "919.8"),
    "mahalanobis": ("78.87 (SimCLR+Maha.)", "674.8"),
}


def main_markdown(main: dict, labels: dict[str, str]) -> list[str]:
    lines = [
        f"ID `{TEST_ID}`; far: digits, letters, textures; near: inverted, rotated. AUROC in % with its bootstrap 95% "
        "interval; FPR95 in % (ID positive); img/s end to end here. The paper's columns are its CIFAR-10 numbers "
        "(Table 1 for the generative methods, Table 3 for the others) on its GPU.",
        "",
        "| method | paper: AUROC | paper: img/s | far AUROC [95% CI] | near AUROC [95% CI] | **all AUROC [95% CI]** "
        "| FPR95 all | img/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in main["methods"].items():
        speed = main["images_per_second"].get(name)
        paper_auroc, paper_speed = PAPER.get(name, ("–", "–"))
        lines.append(
            f"| {labels.get(name, name)} | {paper_auroc} | {paper_speed} | {_cell(entry.get('far'))} | "
            f"{_cell(entry.get('near'))} | **{_cell(entry.get('all'))}** | {100 * entry['all']['fpr95']:.1f} | "
            f"{'–' if speed is None else f'{speed:.0f}'} |"
        )
    sets = list(TEST_OOD)
    lines += [
        "",
        "Per set, AUROC [95% CI]:",
        "",
        "| method | " + " | ".join(s.removeprefix("demo:") for s in sets) + " |",
    ]
    lines.append("|---" * (len(sets) + 1) + "|")
    for name, entry in main["methods"].items():
        lines.append(f"| {labels.get(name, name)} | " + " | ".join(_cell(entry.get(s)) for s in sets) + " |")
    lines += ["", *(f"- {note}" for note in main["notes"]), ""]
    return lines


def claims_markdown(main: dict, labels: dict[str, str]) -> list[str]:
    """Paired bootstrap differences between DLSR MFsim and every other method, per group."""
    methods = main["methods"]
    if "mfsim" not in methods:
        return []
    lines = [
        "DLSR MFsim minus each method, average AUROC in points, with the 95% interval of the difference on the same "
        "resamples (paired bootstrap). *Inside the noise* = the interval contains 0.",
        "",
        "| method | far | near | all |",
        "|---|---|---|---|",
    ]
    for name, entry in methods.items():
        if name == "mfsim":
            continue
        cells = []
        for group in GROUPS:
            difference, low, high = paired_difference(methods["mfsim"], entry, group)
            noise = " *(inside the noise)*" if low <= 0 <= high else ""
            cells.append(f"{100 * difference:+.2f} [{100 * low:+.2f}, {100 * high:+.2f}]{noise}")
        lines.append(f"| {labels.get(name, name)} | " + " | ".join(cells) + " |")
    return lines + [""]


def seeds_markdown(seeds: dict) -> list[str]:
    table = seeds["table"]
    columns = [(key, label) for key, label in SEED_COLUMNS if key in table]
    lines = [
        f"{len(seeds['runs']['dlsr'])} training seeds of the chosen setting (LFDN and feature autoencoder); mean ± std "
        "of AUROC in % over the seeds.",
        "",
        "| set | " + " | ".join(label for _, label in columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    for key in [*TEST_OOD, *GROUPS]:
        cells = [
            f"{100 * table[score][key]['mean']:.2f} ± {100 * table[score][key]['std']:.2f}" for score, _ in columns
        ]
        label = key.removeprefix("demo:") if key in TEST_OOD else f"**average {key}**"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    runs = ", ".join(f"`{run}`" for run in seeds["runs"]["dlsr"])
    return lines + [
        "",
        f"LFDN runs: {runs}; feature autoencoder seeds trained on the same fit features. k-NN and Mahalanobis have no "
        "training seed (deterministic fits).",
        "",
    ]


SEED_COLUMNS = (("mse", "DLSR MSE"), ("mfsim", "DLSR MFsim"), ("lr", "DLSR LR"), ("feature_ae", "Feature AE"))


def heldout_markdown(result: dict) -> list[str]:
    from dlsr_core.data import FASHION_MNIST_CLASSES

    groups = result["groups"]
    names = [n for n in groups if groups[n] == "near"]
    heads = [FASHION_MNIST_CLASSES[int(n.rsplit("=", 1)[1])] for n in names]
    lines = [
        f"Trained on `{heldout.TRAIN_SET}` (T-shirt/top, Trouser, Pullover, Dress, Sandal, Sneaker); ID test: "
        f"`{heldout.ID_TEST}`; OOD: each held-out class's test images. AUROC [95% CI] in %.",
        "",
        "| method | " + " | ".join(heads) + " | **held-out average** | far average |",
        "|---" * (len(heads) + 3) + "|",
    ]
    for label, entry in result["methods"].items():
        cells = [_cell(entry.get(n)) for n in names] + [f"**{_cell(entry.get('near'))}**", _cell(entry.get("far"))]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines + ["", *(f"- {note}" for note in result["notes"]), ""]


def public(value):
    """`value` without the per-resample arrays (keys starting with "_"), for JSON."""
    if isinstance(value, dict):
        return {k: public(v) for k, v in value.items() if not str(k).startswith("_")}
    return value


TITLES = {
    "settings": "Settings chosen on validation data",
    "sweep": "The sweep (validation protocol)",
    "main": "Test table",
    "claims": "Which differences are inside the noise",
    "seeds": "Training seeds",
    "heldout": "Held-out classes (semantic near-OOD)",
    "notes": "How these numbers were made",
}


def collect(args, sweep: dict, settings: EvaluationSettings) -> tuple[dict[str, list[str]], dict]:
    """Every block of the evidence (name -> Markdown lines) and the JSON report."""
    from benchmarks.sweep import markdown as sweep_markdown
    from dlsr_core.baselines.store import baselines_dir
    from dlsr_core.comparison import METHODS

    detector = Detector.load(args.checkpoint, device="cpu")
    labels = {name: method.label for name, method in METHODS.items()}
    levels_path = Path(args.out) / "pixel_levels.json"  # written by `python -m benchmarks.pixel_levels`
    pixel_levels = json.loads(levels_path.read_text()) if levels_path.is_file() else None
    blocks = {"settings": settings_markdown(sweep, pixel_levels)}
    if sweep:
        blocks["sweep"] = sweep_markdown(sweep).splitlines()[2:]  # without its title
    report: dict = {"settings": {"timestep": settings.timestep, "steps": settings.steps, "knn_k": settings.knn_k}}
    report["main"] = main_table(detector, settings, Path(args.baselines or baselines_dir()), args.subset)
    blocks["main"] = main_markdown(report["main"], labels)
    blocks["claims"] = claims_markdown(report["main"], labels)
    if "seeds" in sweep:
        log("seeds")
        report["seeds"] = seed_table(sweep["seeds"], settings, args.subset)
        blocks["seeds"] = seeds_markdown(report["seeds"])
    if (heldout.RUN_DIR / "last.safetensors").is_file():
        log("held-out classes")
        report["heldout"] = heldout_table(settings, args.subset)
        blocks["heldout"] = heldout_markdown(report["heldout"])
    machine = f"{platform.machine()} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    blocks["notes"] = [
        f"img/s: end to end from decoded validation images, one method after another; {machine}, torch "
        f"{torch.__version__}; {args.machine_note}. Bootstrap: {RESAMPLES} resamples, ID and each OOD set drawn with "
        "replacement, the ID draw shared by the OOD sets of a resample; percentile intervals. " + FPR95_CONVENTION,
        *([] if args.subset is None else ["", f"**Smoke run: at most {args.subset} images per set.**"]),
        "",
    ]
    return blocks, report


def update_readme(path: Path, blocks: dict[str, list[str]]) -> list[str]:
    """Replace every `<!-- evidence:NAME:start -->` ... `<!-- evidence:NAME:end -->` block of `path` with the
    generated block NAME; returns the names replaced."""
    import re

    text, replaced = path.read_text(), []
    for name, lines in blocks.items():
        pattern = re.compile(rf"(<!-- evidence:{name}:start -->\n).*?(<!-- evidence:{name}:end -->)", re.S)
        if pattern.search(text):
            body = "\n".join(lines).strip() + "\n"
            text = pattern.sub(lambda match, body=body: match.group(1) + body + match.group(2), text)
            replaced.append(name)
    path.write_text(text)
    return replaced


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=str(DEFAULT_RUN_DIR))
    parser.add_argument("--baselines", default=None, help="baselines folder (default: checkpoints/baselines)")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--subset", type=int, default=None, help="at most N images per set (smoke run)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--machine-note", default="shared machine: other jobs may have run, speeds are noisy")
    parser.add_argument("--readme", default=None, help="also rewrite this file's <!-- evidence:NAME --> blocks")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    sweep = json.loads(SWEEP_RESULTS.read_text()) if SWEEP_RESULTS.is_file() else {}
    blocks, report = collect(args, sweep, chosen(sweep))
    sections = ["# The evidence (`python -m benchmarks.evidence`)", ""]
    for name, lines in blocks.items():
        sections += [f"## {TITLES[name]}", "", *lines]
    sections.append(f"Run time {(time.perf_counter() - started) / 60:.1f} min.")
    markdown = "\n".join(sections) + "\n"
    print(markdown)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "evidence.md").write_text(markdown)
    (out / "evidence.json").write_text(json.dumps(public(report), indent=2, default=float) + "\n")
    log(f"wrote {out / 'evidence'}.{{md,json}}")
    if args.readme:
        log(f"{args.readme}: replaced {', '.join(update_readme(Path(args.readme), blocks)) or 'no'} blocks")


if __name__ == "__main__":
    main()
