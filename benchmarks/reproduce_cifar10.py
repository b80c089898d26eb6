"""Reproduce the paper's CIFAR-10 setting: `benchmarks.reproduce_paper --id cifar10` (kept for existing commands).

python -m benchmarks.reproduce_cifar10 --data-root data --ood-root data --download --out runs/cifar10_b4
"""

from __future__ import annotations

import sys

from benchmarks import reproduce_paper


def main(argv: list[str] | None = None) -> int:
    return reproduce_paper.main(["--id", "cifar10", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
