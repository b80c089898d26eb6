"""Reproduce the paper's CIFAR settings and print every cell as "ours / paper / difference" (AUROC %).

EfficientNet-B4 features at 224 px, LFDN 1440 x 16, CIFAR-10 or CIFAR-100 as ID, the `official` preset by default
(the authors' released code produced the paper's numbers; `--preset paper` uses the paper's equations instead):

    python -m benchmarks.reproduce_paper --id cifar10 --data-root data --ood-root data --download --out runs/cifar10
    python -m benchmarks.reproduce_paper --id cifar100 --data-root data --ood-root data --download --out runs/cifar100

The sets are the experiment files experiments/cifar10_paper.json and experiments/cifar100_paper.json (openable in
the app too): the OOD sets of Table 1 (CIFAR-10 only) and Table 3, those torchvision downloads (SVHN, MNIST,
FashionMNIST, KMNIST, Omniglot) by name, the rest as image folders under --ood-root (LSUN, LSUN_resize, iSUN,
dtd/images, places365, notMNIST; each file's notes say where to get them; a missing folder is skipped with a note),
plus the other CIFAR set as a near-OOD set the paper does not tabulate. `train --experiment` writes those sets beside
the run and `evaluate --experiment` evaluates them. Every step is the ordinary CLI and is printed, so the training
step can be re-run under torchrun for several GPUs. The paper's tables come from benchmarks/paper_results.json; the
comparison goes to OUT/paper_comparison.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from dlsr_core.cli import main as cli_main
from dlsr_core.data import load_experiment, parse_dataset

PAPER_RESULTS = Path(__file__).with_name("paper_results.json")
EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
SCORES = {"mse": "DLSR+MSE", "lr": "DLSR+LR", "mfsim": "DLSR+MFsim"}
TORCHVISION_ID = {"cifar10": "CIFAR10", "cifar100": "CIFAR100"}
TABLES = {"cifar10": ("table1", "table3"), "cifar100": ("table3_cifar100",)}
# A set's display name in the experiment file is its column in the paper's tables, except: Table 1's "LSUN" is taken
# to be the cropped LSUN set (Table 3's LSUN-c), since the paper names no other.
COLUMN_ALIASES = {("table1", "LSUN-c"): "LSUN"}


def experiment_file(identifier: str) -> Path:
    """The experiment file of this paper setting (experiments/<id>_paper.json)."""
    return EXPERIMENTS / f"{identifier}_paper.json"


def paper_tables() -> dict:
    """The paper's tables (benchmarks/paper_results.json)."""
    return json.loads(PAPER_RESULTS.read_text())["tables"]


def ood_sets(identifier: str, ood_root: str, notes: bool = False) -> dict[str, dict[str, str]]:
    """The experiment file's OOD dataset specs (folders read from `ood_root`) -> {paper table: column}; folders
    missing under `ood_root` are skipped (and named on stderr, with where to get them, with `notes`)."""
    tables = paper_tables()
    chosen = {}
    for ood in load_experiment(experiment_file(identifier), ood_root).ood_sets:
        path = parse_dataset(ood.spec).path
        if path is not None and not Path(path).is_dir():
            if notes:
                print(f"note: OOD folder {path} not found; skipped ({ood.note})", file=sys.stderr)
            continue
        columns = {}
        for table in TABLES[identifier]:
            column = COLUMN_ALIASES.get((table, ood.name), ood.name)
            if column in tables[table]["cells"]:
                columns[table] = column
        chosen[ood.spec] = columns  # {} for the other CIFAR set: near OOD, not in the paper's tables
    return chosen


def build_commands(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """The `train` and `evaluate` CLI argument lists for this setting."""
    name = TORCHVISION_ID[args.id]
    shared = ["--backbone", args.backbone, "--weights", args.weights, "--input-size", str(args.input_size)]
    data = ["--data-root", args.data_root] + (["--download"] if args.download else [])
    if args.cache_dir:
        data += ["--cache-dir", args.cache_dir]
    sets = ["--experiment", str(experiment_file(args.id)), "--sets-root", args.ood_root]
    optional = {"--epochs": args.epochs, "--train-batch-size": args.batch_size, "--lr": args.lr}
    train = ["train", "-d", f"torchvision:{name}:train", "--out", args.out, "--preset", args.preset, *sets]
    train += ["--width", str(args.width), "--depth", str(args.depth)]
    train += [item for flag, value in optional.items() if value is not None for item in (flag, str(value))]
    train += [*shared, *data]
    ood_sets(args.id, args.ood_root, notes=True)  # name the missing folders before anything runs
    evaluate = ["evaluate", "--checkpoint", args.out, *sets]
    if args.baselines:
        evaluate += ["--train", f"torchvision:{name}:train"]
    if args.timestep is not None:
        evaluate += ["-t", str(args.timestep)]
    evaluate += ["--json", str(Path(args.out) / "evaluation.json"), "--csv", str(Path(args.out) / "evaluation.csv")]
    evaluate += data
    if args.quiet:
        train.append("--quiet")
        evaluate.append("--quiet")
    return train, evaluate


def _cell(ours: float | None, paper: float | None) -> str:
    if ours is None and paper is None:
        return "—"
    if paper is None:
        return f"{ours:.2f} / — / —"
    if ours is None:
        return f"— / {paper:.2f} / —"
    return f"{ours:.2f} / {paper:.2f} / {ours - paper:+.2f}"


def compare(report: dict, identifier: str, ood_root: str, width: int = 1440, depth: int = 16) -> dict:
    """Our AUROC (%) beside the paper's for every cell of the paper's tables for this ID set.

    `report` is `evaluate`'s JSON. Returns {table: {"caption", "rows": {OOD column: {score: {"ours", "paper",
    "difference"}}}}}; averages are taken over the sets we evaluated and marked partial when some are missing.
    """
    ours = {(row["ood_set"], row["score"]): 100 * row["auroc"] for row in report["rows"]}
    tables = paper_tables()
    specs = ood_sets(identifier, ood_root)
    comparison = {}
    for table in TABLES[identifier]:
        paper = tables[table]
        rows: dict[str, dict] = {}
        for column in (name for name in paper["cells"] if name != "average"):
            spec = next((s for s, columns in specs.items() if columns.get(table) == column), None)
            rows[column] = {}
            for score, method in SCORES.items():
                mine = ours.get((spec, score)) if spec else None
                reported = paper["cells"][column].get(method, {}).get("auroc")
                rows[column][score] = _entry(mine, reported)
        measured = [column for column in rows if rows[column]["mfsim"]["ours"] is not None]
        rows["average"] = {}
        for score, method in SCORES.items():
            values = [rows[column][score]["ours"] for column in measured if rows[column][score]["ours"] is not None]
            mine = sum(values) / len(values) if values else None
            rows["average"][score] = _entry(mine, paper["cells"]["average"].get(method, {}).get("auroc"))
        complete = len(measured) == len(rows) - 1
        comparison[table] = {
            "caption": paper["caption"],
            "average_over": "all sets" if complete else f"{len(measured)} of {len(rows) - 1} sets (partial)",
            "rows": rows,
        }
    if identifier == "cifar100":
        size_rows = {(720, 16): "width 720", (1440, 8): "8 blocks", (1440, 16): "width 1440"}
        if (width, depth) in size_rows:
            label = size_rows[(width, depth)]
            average = comparison["table3_cifar100"]["rows"]["average"]
            comparison["table4"] = {
                "caption": tables["table4"]["caption"],
                "average_over": comparison["table3_cifar100"]["average_over"],
                "rows": {
                    label: {
                        score: _entry(average[score]["ours"], tables["table4"]["cells"][label][method]["auroc"])
                        for score, method in SCORES.items()
                    }
                },
            }
    return comparison


def _entry(ours: float | None, paper: float | None) -> dict:
    difference = ours - paper if ours is not None and paper is not None else None
    return {"ours": ours, "paper": paper, "difference": difference, "cell": _cell(ours, paper)}


def to_markdown(comparison: dict, title: str) -> str:
    """One Markdown table per paper table; cells are "ours / paper / difference" in AUROC %."""
    lines = [f"### {title}", "", "Cells: AUROC % as ours / paper / difference (ours - paper).", ""]
    for table in comparison.values():
        lines += [f"**{table['caption']}** (our averages over {table['average_over']})", ""]
        lines += ["| OOD set | DLSR+MSE | DLSR+LR | DLSR+MFsim |", "|---|---|---|---|"]
        for column, cells in table["rows"].items():
            lines.append(f"| {column} | " + " | ".join(cells[score]["cell"] for score in SCORES) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--id", choices=sorted(TORCHVISION_ID), default="cifar10", help="the ID set")
    parser.add_argument("--data-root", default="data", help="torchvision dataset root")
    parser.add_argument(
        "--ood-root", default="data", help="folder holding LSUN/, LSUN_resize/, iSUN/, dtd/, places365/, notMNIST/"
    )
    parser.add_argument("--download", action="store_true", help="let torchvision download the CIFAR and OOD sets")
    parser.add_argument("--out", default=None, help="run directory (default runs/<id>_<preset>)")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--preset", choices=("official", "paper"), default="official")
    parser.add_argument("--backbone", default="efficientnet_b4")
    parser.add_argument("--weights", default="pretrained")
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--width", type=int, default=1440)
    parser.add_argument("--depth", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=None, help="default: the preset's (official: 150)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the preset's (256)")
    parser.add_argument("--lr", type=float, default=None, help="default: the preset's (official: 1e-5)")
    parser.add_argument("--timestep", type=int, default=None, help="default: the preset's (official: 4)")
    parser.add_argument("--no-baselines", dest="baselines", action="store_false", help="skip k-NN and Mahalanobis")
    parser.add_argument("--skip-training", action="store_true", help="evaluate an existing run in --out")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    args.out = args.out or f"runs/{args.id}_{args.preset}"
    train, evaluate = build_commands(args)
    for command in ([] if args.skip_training else [train]) + [evaluate]:
        print("$ python -m dlsr_core " + shlex.join(command), flush=True)
        code = cli_main(command)
        if code != 0:
            return code
    report = json.loads((Path(args.out) / "evaluation.json").read_text())
    comparison = compare(report, args.id, args.ood_root, args.width, args.depth)
    title = f"{TORCHVISION_ID[args.id]} as ID, preset {args.preset}, {args.backbone} @ {args.input_size} px"
    text = to_markdown(comparison, title)
    print(text)
    (Path(args.out) / "paper_comparison.json").write_text(json.dumps(comparison, indent=2))
    (Path(args.out) / "paper_comparison.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
