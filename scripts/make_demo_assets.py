"""Regenerate the bundled demo sets in assets/demo/ (deterministic: same inputs give identical files).

Usage (from the repository root)::

    python scripts/make_demo_assets.py [--data-root DIR] [--out assets/demo]

Needs the Fashion-MNIST idx files (Debian: `apt-get install dataset-fashion-mnist`, or --data-root),
scikit-learn, scikit-image and the DejaVu fonts. Every set is 28x28 grayscale uint8, light on dark,
stored with np.savez-compatible arrays ``images`` (N,28,28), ``labels`` (N,), ``class_names`` and,
for sets cut from Fashion-MNIST, ``source_index`` (row in the test split).
"""

from __future__ import annotations

import argparse
import importlib
import io
import sys
import zipfile
from pathlib import Path

import numpy as np

# Running `python scripts/make_demo_assets.py` puts scripts/ (not the repo root) on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

data = importlib.import_module("dlsr_core.data")

SEED = 0
ID_PER_CLASS = 200
NEAR_PER_CLASS = 100
FAR_SIZE = 1000
COMMAND = "python scripts/make_demo_assets.py"

DemoSet = dict[str, np.ndarray]


def _fashion_sets(data_root: str | Path | None) -> dict[str, DemoSet]:
    """ID set and two near-OOD sets from disjoint, class-balanced draws of the Fashion-MNIST test split."""
    images, labels = data.load_fashion_mnist("test", data_root)
    rng = np.random.default_rng(SEED)
    picks: dict[str, list[np.ndarray]] = {"id": [], "inverted": [], "rotated": []}
    for c in range(10):
        order = rng.permutation(np.flatnonzero(labels == c))
        picks["id"].append(order[:ID_PER_CLASS])
        picks["inverted"].append(order[ID_PER_CLASS : ID_PER_CLASS + NEAR_PER_CLASS])
        picks["rotated"].append(order[ID_PER_CLASS + NEAR_PER_CLASS : ID_PER_CLASS + 2 * NEAR_PER_CLASS])
    index = {k: np.sort(np.concatenate(v)) for k, v in picks.items()}
    names = np.array(data.FASHION_MNIST_CLASSES)
    turns = rng.integers(1, 4, size=len(index["rotated"]))
    rotated = np.stack([np.rot90(images[i], k=int(k)) for i, k in zip(index["rotated"], turns, strict=True)])
    return {
        "fashion_mnist_test": {
            "images": images[index["id"]],
            "labels": labels[index["id"]],
            "class_names": names,
            "source_index": index["id"],
        },
        "fashion_mnist_inverted": {
            "images": 255 - images[index["inverted"]],
            "labels": labels[index["inverted"]],
            "class_names": names,
            "source_index": index["inverted"],
        },
        "fashion_mnist_rotated": {
            "images": rotated,
            "labels": labels[index["rotated"]],
            "class_names": names,
            "source_index": index["rotated"],
            "rotation_degrees": (turns * 90).astype(np.int64),
        },
    }


def _far_sets() -> dict[str, DemoSet]:
    digit_images, digit_labels = data.digits_images()
    rng = np.random.default_rng(SEED)
    per_class = FAR_SIZE // 10
    chosen = np.sort(
        np.concatenate([rng.permutation(np.flatnonzero(digit_labels == c))[:per_class] for c in range(10)])
    )
    letters = [data.render_letter(i) for i in range(FAR_SIZE)]
    textures = [data.render_texture(i) for i in range(FAR_SIZE)]
    return {
        "digits": {
            "images": digit_images[chosen],
            "labels": digit_labels[chosen],
            "class_names": np.array([str(d) for d in range(10)]),
        },
        "letters": {
            "images": np.stack([img for img, _ in letters]),
            "labels": np.array([label for _, label in letters], dtype=np.int64),
            "class_names": np.array(list(data.LETTERS)),
        },
        "textures": {
            "images": np.stack([img for img, _ in textures]),
            "labels": np.array([label for _, label in textures], dtype=np.int64),
            "class_names": np.array(data.TEXTURE_IMAGES),
        },
    }


def build_demo_sets(data_root: str | Path | None = None) -> dict[str, DemoSet]:
    """All demo sets by name -> arrays; images are (N,28,28) uint8."""
    sets = {**_fashion_sets(data_root), **_far_sets()}
    for arrays in sets.values():
        arrays["labels"] = arrays["labels"].astype(np.int64)
    return sets


def save_npz(path: Path, arrays: DemoSet) -> None:
    """Write arrays like np.savez_compressed, but with fixed zip timestamps so identical data gives
    identical bytes (regenerating then leaves git with nothing to commit)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, buffer.getvalue(), compresslevel=9)


_README_SOURCES = {
    "fashion_mnist_test": (
        (
            "In-distribution set: {n} images of the Fashion-MNIST **test** split, {per} per class, drawn with "
            "`numpy.random.default_rng(0)`; `source_index` gives each image's row in the test split."
        ),
        (
            "Fashion-MNIST © Zalando SE, MIT licence (https://github.com/zalandoresearch/fashion-mnist); "
            "read from the Debian package `dataset-fashion-mnist`."
        ),
    ),
    "fashion_mnist_inverted": (
        (
            "Near OOD: {n} other test-split images ({per} per class, disjoint from `fashion_mnist_test` and "
            "`fashion_mnist_rotated`), intensities inverted (255 - x)."
        ),
        "Fashion-MNIST © Zalando SE, MIT licence.",
    ),
    "fashion_mnist_rotated": (
        (
            "Near OOD: {n} other test-split images ({per} per class, disjoint from the two sets above), each "
            "rotated by 90, 180 or 270 degrees (`rotation_degrees`)."
        ),
        "Fashion-MNIST © Zalando SE, MIT licence.",
    ),
    "digits": (
        (
            "Far OOD: {n} of scikit-learn's 1,797 8x8 handwritten digits ({per} per class), scaled 0-16 -> 0-255, "
            "resized to 20x20 and centred in 28x28 like MNIST (`dlsr_core.data.digits_images`)."
        ),
        (
            "UCI Optical Recognition of Handwritten Digits (Alpaydin & Kaynak, 1998), CC BY 4.0, as shipped in "
            "scikit-learn (BSD-3-Clause)."
        ),
    ),
    "letters": (
        (
            "Far OOD: {n} notMNIST-style letters A-J (balanced), rendered by `dlsr_core.data.render_letter` "
            "from 12 DejaVu faces with random size, outline, brightness, offset and rotation."
        ),
        (
            "Rendered by this project; DejaVu fonts are under the Bitstream Vera / DejaVu free font licence "
            "(rendered glyph images carry no font-licence restriction)."
        ),
    ),
    "textures": (
        (
            "Far OOD: {n} random 24-128 px square crops, resized to 28x28 grayscale and randomly flipped/rotated, "
            "cycling through scikit-image's bundled images "
            + ", ".join(data.TEXTURE_IMAGES)
            + " (`dlsr_core.data.render_texture`)."
        ),
        (
            "Only images whose scikit-image docstrings state CC0, public domain or no known copyright "
            "restrictions are used; scikit-image itself is BSD-3-Clause."
        ),
    ),
}


def write_readme(out_dir: Path, sets: dict[str, DemoSet]) -> None:
    lines = [
        "# Demo datasets",
        "",
        "Small 28x28 grayscale uint8 sets (light on dark) so the app and CLI work offline. Load them with",
        '`dlsr_core.data.open_dataset("demo:<name>")`. Each `<name>.npz` holds `images` (N,28,28) uint8,',
        "`labels` (N,) int64 and `class_names`; Fashion-MNIST sets also hold `source_index`.",
        "",
        f"Regenerate all of them (byte-identical output) with `{COMMAND}` from the repository root",
        "(needs `apt-get install dataset-fashion-mnist` or `--data-root DIR` with the Fashion-MNIST idx files).",
        "",
        "| set | images | role | source | licence |",
        "|---|---|---|---|---|",
    ]
    for name, arrays in sets.items():
        n = len(arrays["images"])
        per = n // max(1, len(arrays["class_names"]))
        source, licence = _README_SOURCES[name]
        role = "ID" if name == "fashion_mnist_test" else ("near OOD" if name.startswith("fashion") else "far OOD")
        lines.append(f"| `{name}` | {n} | {role} | {source.format(n=n, per=per)} | {licence} |")
    (out_dir / "README.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", help="folder with the Fashion-MNIST idx files (default: Debian path)")
    parser.add_argument("--out", type=Path, default=data.DEMO_DIR, help="output folder (default: assets/demo)")
    args = parser.parse_args(argv)
    try:
        sets = build_demo_sets(args.data_root)
    except data.DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    for name, arrays in sets.items():
        save_npz(args.out / f"{name}.npz", arrays)
        print(f"{name}: {arrays['images'].shape} -> {args.out / (name + '.npz')}")
    write_readme(args.out, sets)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
