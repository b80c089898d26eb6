"""The validation protocol's dataset names: fit / val splits, class selections, the shapes source, roll shifts."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from dlsr_core.data import (
    FASHION_MNIST_DIR,
    SHAPE_KINDS,
    DatasetError,
    open_dataset,
    parse_dataset,
    render_shape,
)
from dlsr_core.data.dataset import ImageDataset
from dlsr_core.data.registry import select_classes
from dlsr_core.data.spec import format_classes
from dlsr_core.validation import fit_indices, validation_indices

needs_fashion = pytest.mark.skipif(
    not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists(), reason="dataset-fashion-mnist not installed"
)


def _write_idx(path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def fake_root(tmp_path):
    """A Fashion-MNIST folder with 30 training images: image i is filled with value i, label i % 10."""
    images = np.stack([np.full((28, 28), i, dtype=np.uint8) for i in range(30)])
    _write_idx(tmp_path / "train-images-idx3-ubyte", images)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", np.arange(30) % 10)
    return tmp_path


def _first_pixels(dataset) -> list[int]:
    return [int(np.asarray(dataset[i])[0, 0, 0]) for i in range(len(dataset))]


def test_fit_and_val_are_the_protocol_rows_of_train(fake_root):
    val = open_dataset("fashion_mnist:val", data_root=fake_root)
    fit = open_dataset("fashion_mnist:fit", data_root=fake_root)
    assert _first_pixels(val) == [11, 23] == validation_indices(30).tolist()
    assert _first_pixels(fit) == fit_indices(30).tolist() and len(fit) == 28
    assert val.labels == [1, 3] and val.class_names[1] == "Trouser"
    assert len({val.identity, fit.identity, open_dataset("fashion_mnist:train", data_root=fake_root).identity}) == 3


def test_class_selection_keeps_labels_and_order(fake_root):
    subset = open_dataset("fashion_mnist:fit:classes=0-2,9", data_root=fake_root)
    assert subset.name == "fashion_mnist:fit:classes=0-2,9"
    assert _first_pixels(subset) == [0, 1, 2, 9, 10, 12, 19, 20, 21, 22, 29]  # 11 is a validation image
    assert subset.labels == [0, 1, 2, 9, 0, 2, 9, 0, 1, 2, 9]
    shifted = open_dataset("fashion_mnist:val:classes=1+invert", data_root=fake_root)
    assert _first_pixels(shifted) == [255 - 11] and shifted.name == "fashion_mnist:val:classes=1+invert"
    with pytest.raises(DatasetError, match="no image has one of the classes"):
        open_dataset("fashion_mnist:val:classes=12", data_root=fake_root)


def test_demo_sets_select_classes_too():
    demo = open_dataset("demo:fashion_mnist_test")
    known = open_dataset("demo:fashion_mnist_test:classes=0-3,5,7")
    assert len(known) == 1200 and set(known.labels) == {0, 1, 2, 3, 5, 7}
    first_coat = demo.labels.index(4)
    coats = open_dataset("demo:fashion_mnist_test:classes=4+invert")
    assert len(coats) == 200 and coats.name == "demo:fashion_mnist_test:classes=4+invert"
    np.testing.assert_array_equal(np.asarray(coats[0]), 255 - np.asarray(demo[first_coat]))
    unlabelled = ImageDataset("x", "x", 2, lambda i: None)
    with pytest.raises(DatasetError, match="no labels"):
        select_classes(unlabelled, (1,))


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("fashion_mnist:test:classes=5,0,1,2", "fashion_mnist:test:classes=0-2,5"),
        ("FMNIST:Fit:classes=4, 6 ,8-9", "fashion_mnist:fit:classes=4,6,8,9"),
        ("fashion_mnist:val:classes=3-3+rollx", "fashion_mnist:val:classes=3+rollx"),
        ("fashion_mnist:val+rolly", "fashion_mnist:val+rolly"),
        ("shapes+rot90", "shapes+rot90"),
        ("demo:fashion_mnist_test:classes=8,4", "demo:fashion_mnist_test:classes=4,8"),
    ],
)
def test_new_specs_have_one_canonical_form(text, canonical):
    spec = parse_dataset(text)
    assert str(spec) == canonical and parse_dataset(canonical) == spec


@pytest.mark.parametrize(
    "text",
    [
        "fashion_mnist:test:labels=1",
        "fashion_mnist:test:classes=",
        "fashion_mnist:test:classes=a",
        "fashion_mnist:val:classes=5-2",
        "shapes:x",
    ],
)
def test_bad_class_selections_are_refused(text):
    with pytest.raises(DatasetError):
        parse_dataset(text)


def test_format_classes_known_answers():
    assert format_classes((0, 1, 2, 5)) == "0-2,5"
    assert format_classes((0, 1, 3, 4, 5, 9)) == "0,1,3-5,9"
    assert format_classes((7,)) == "7"


@needs_fashion
def test_real_fit_and_val_sizes_and_classes():
    val = open_dataset("fashion_mnist:val")
    fit = open_dataset("fashion_mnist:fit")
    assert (len(fit), len(val)) == (55000, 5000)
    assert min(np.bincount(val.labels)) >= 450  # every class about equally represented
    train = open_dataset("fashion_mnist:train")
    np.testing.assert_array_equal(np.asarray(val[0]), np.asarray(train[11]))
    np.testing.assert_array_equal(np.asarray(fit[11]), np.asarray(train[12]))
    held_out = open_dataset("fashion_mnist:test:classes=4,6,8,9")
    assert len(held_out) == 4000 and set(held_out.labels) == {4, 6, 8, 9}


def test_shapes_are_deterministic_light_silhouettes_of_every_kind():
    shapes = open_dataset("shapes")
    assert len(shapes) == 5000 and shapes.class_names == SHAPE_KINDS
    assert shapes.labels[: len(SHAPE_KINDS)] == list(range(len(SHAPE_KINDS)))
    for index in range(2 * len(SHAPE_KINDS)):
        array, label = render_shape(index)
        assert array.shape == (28, 28) and array.dtype == np.uint8 and label == index % len(SHAPE_KINDS)
        assert array[0, 0] < 10 and array.max() >= 100  # light shape on a dark background
        np.testing.assert_array_equal(np.asarray(shapes[index])[..., 0], array)
    assert not np.array_equal(render_shape(0)[0], render_shape(len(SHAPE_KINDS))[0])  # same kind, other draw


def test_roll_shifts_swap_the_halves():
    base = open_dataset("demo:digits")
    original = np.asarray(base[3])
    np.testing.assert_array_equal(
        np.asarray(open_dataset("demo:digits+rollx")[3]), np.concatenate([original[:, 14:], original[:, :14]], axis=1)
    )
    np.testing.assert_array_equal(
        np.asarray(open_dataset("demo:digits+rolly")[3]), np.concatenate([original[14:], original[:14]], axis=0)
    )


def test_the_heldout_experiment_names_sets_that_open():
    import json
    from pathlib import Path

    from benchmarks import heldout

    document = json.loads((Path(__file__).parents[1] / "checkpoints/heldout_classes/experiment.json").read_text())
    assert document["training_set"] == heldout.TRAIN_SET
    specs = [document["id_set"]["spec"], *(entry["spec"] for entry in document["ood_sets"])]
    for spec in specs:
        assert str(parse_dataset(spec)) == spec  # canonical, as stored
        dataset = open_dataset(spec)  # demo sets: shipped, no download
        assert len(dataset) > 0
    held_out = {entry["spec"].rsplit("=", 1)[1] for entry in document["ood_sets"] if "classes=" in entry["spec"]}
    assert held_out == {str(label) for label in heldout.HELD_OUT_CLASSES}
    known = open_dataset(document["id_set"]["spec"])
    assert set(known.labels) == set(heldout.KNOWN_CLASSES) and len(known) == 1200
