"""Reproduce the paper's CIFAR-10 setting: EfficientNet-B4 features at 224 px, LFDN 1440 x 16, CIFAR-10 as ID.

OOD sets follow the official DLSR repository: CIFAR-100 and SVHN (downloaded by torchvision with --download) and
the image folders iSUN, LSUN, LSUN_resize, DTD (dtd/images) and Places365 under --ood-root, where present.
Needs network (timm hub weights, torchvision downloads) and realistically a GPU:

    python -m benchmarks.reproduce_cifar10 --data-root data --ood-root data --download --out runs/cifar10_b4
    torchrun --nproc_per_node=4 -m dlsr_core train ...   # the same training step on several GPUs (printed below)

Every step is the ordinary CLI, so the printed commands can be run one by one. Tests run this end to end with a
fake CIFAR-10, fake OOD folders and a randomly initialised backbone (--weights random and tiny sizes).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from dlsr_core.cli import main as cli_main

FOLDER_OOD_SETS = ("iSUN", "LSUN", "LSUN_resize", "dtd/images", "places365")


def build_commands(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """The `train` and `evaluate` CLI argument lists for this setting."""
    shared = ["--backbone", args.backbone, "--weights", args.weights, "--input-size", str(args.input_size)]
    data = ["--data-root", args.data_root] + (["--download"] if args.download else [])
    if args.cache_dir:
        data += ["--cache-dir", args.cache_dir]
    train = [
        "train",
        "-d",
        "torchvision:CIFAR10:train",
        "--out",
        args.out,
        "--width",
        str(args.width),
        "--depth",
        str(args.depth),
        "--epochs",
        str(args.epochs),
        "--train-batch-size",
        str(args.batch_size),
        "--lr",
        str(args.lr),
        *shared,
        *data,
    ]
    ood = ["torchvision:CIFAR100:test", "torchvision:SVHN:test"]
    for name in FOLDER_OOD_SETS:
        folder = Path(args.ood_root) / name
        if folder.is_dir():
            ood.append(f"folder:{folder}")
        else:
            print(f"note: OOD folder {folder} not found; skipped", file=sys.stderr)
    evaluate = [
        "evaluate",
        "--checkpoint",
        args.out,
        "--id",
        "torchvision:CIFAR10:test",
        "--ood",
        *ood,
        "--train",
        "torchvision:CIFAR10:train",
        "-t",
        str(args.timestep),
        "--json",
        str(Path(args.out) / "evaluation.json"),
        "--csv",
        str(Path(args.out) / "evaluation.csv"),
        *data,
    ]
    if args.quiet:
        train.append("--quiet")
        evaluate.append("--quiet")
    return train, evaluate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="data", help="torchvision dataset root")
    parser.add_argument(
        "--ood-root", default="data", help="folder holding iSUN/, LSUN/, LSUN_resize/, dtd/, places365/"
    )
    parser.add_argument("--download", action="store_true", help="let torchvision download CIFAR-10/100 and SVHN")
    parser.add_argument("--out", default="runs/cifar10_efficientnet_b4")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--backbone", default="efficientnet_b4")
    parser.add_argument("--weights", default="pretrained")
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--width", type=int, default=1440)
    parser.add_argument("--depth", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=100, help="our default; the paper's epoch count is not restated")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--timestep", type=int, default=5)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    train, evaluate = build_commands(args)
    for command in (train, evaluate):
        print("$ python -m dlsr_core " + shlex.join(command), flush=True)
        code = cli_main(command)
        if code != 0:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
