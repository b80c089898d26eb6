"""Failure cases at the threshold: true error counts, measured categories, class names, CSV."""

import csv
import io

import numpy as np
import pytest
import shipped
from PIL import Image

from dlsr_core import explorer
from dlsr_core.explorer import failures


def blob(brightness: int, size: int = 12, texture: bool = False) -> Image.Image:
    """A light square on black; `texture` adds a checkerboard inside it."""
    array = np.zeros((28, 28), np.uint8)
    array[8 : 8 + size, 8 : 8 + size] = brightness
    if texture:
        array[8 : 8 + size : 2, 8 : 8 + size : 2] = brightness // 2
    return Image.fromarray(array)


def test_image_statistics_measure_brightness_contrast_ink_and_texture():
    stats = failures.image_statistics([blob(200), blob(200, texture=True), None])
    assert stats["ink"][0] == pytest.approx(144 / 784)
    assert stats["brightness"][0] == pytest.approx(144 * 200 / 255 / 784)
    assert stats["texture"][1] > stats["texture"][0] and stats["contrast"][0] > 0
    assert stats["saturation"][0] == 0.0 and np.isnan(stats["ink"][2])


def make_sets(rng: np.random.Generator) -> dict[str, failures.SetData]:
    """ID: two classes in feature space, textured blobs; OOD 'near' sits on class 1, OOD 'far' elsewhere."""
    n = 40
    centres = np.eye(4)[:2] * 5
    labels = np.repeat([0, 1], n // 2)
    id_features = centres[labels] + rng.normal(0, 0.3, (n, 4))
    id_images = [blob(150 + int(rng.integers(0, 80)), texture=True) for _ in range(n)]
    id_images[0] = blob(20)  # dark and flat: little content
    id_scores = np.linspace(0, 1, n)
    id_scores[0] = 5.0  # the dark one is the worst false alarm
    near_features = centres[[1] * 10] + rng.normal(0, 0.3, (10, 4))
    near_images = [blob(190, texture=True) for _ in range(10)]
    far_features = np.tile(np.eye(4)[3] * 5, (10, 1)) + rng.normal(0, 0.3, (10, 4))
    far_images = [blob(255, size=26) for _ in range(10)]
    near_scores = np.r_[np.full(3, 0.1), np.full(7, 9.0)]  # 3 missed
    far_scores = np.r_[0.2, np.full(9, 9.0)]  # 1 missed

    def data(scores, features, images, labels=None, names=None):
        return failures.SetData(
            scores,
            np.full((len(scores), 2), 0.9),
            np.arange(len(scores)) + 100,
            features,
            failures.image_statistics(images),
            labels,
            names,
        )

    return {
        "id": data(id_scores, id_features, id_images, labels, ("Shirt", "Bag")),
        "near": data(near_scores, near_features, near_images, np.zeros(10, int), ("A",)),
        "far": data(far_scores, far_features, far_images),
    }


def test_errors_are_the_true_counts_at_the_threshold_and_carry_measured_categories():
    sets = make_sets(np.random.default_rng(0))
    threshold = explorer.id_threshold95(sets["id"].scores)
    analysis = explorer.analyse_errors("id", sets, threshold)
    assert analysis.id_errors == int((sets["id"].scores > threshold).sum()) == 2
    assert analysis.ood_errors == {"near": 3, "far": 1} and analysis.ood_totals == {"near": 10, "far": 10}
    worst = analysis.of_kind(failures.ID_KIND)[0]
    assert (worst.index, worst.rank, worst.true_class) == (100, 1, "Shirt")
    assert failures.LOW_CONTENT in worst.categories
    missed = analysis.of_kind(failures.OOD_KIND)
    assert [c.rank for c in missed] == [1, 2, 3, 4] and missed[0].score <= missed[-1].score
    near = [c for c in missed if c.dataset == "near"]
    assert all(c.nearest_class == "Bag" and failures.RESEMBLES_CLASS in c.categories for c in near)
    assert all(c.true_class == "A" for c in near)
    far = next(c for c in missed if c.dataset == "far")
    assert far.true_class is None and failures.RESEMBLES_CLASS not in far.categories
    assert failures.SHARES_STATISTICS not in far.categories  # far images are fully inked, unlike any ID image
    counts = {(c.kind, c.category): c for c in analysis.counts}
    assert counts[(failures.OOD_KIND, failures.RESEMBLES_CLASS)].errors == 3
    # Base rate over all 20 OOD images: only 'near' images (on class 1) can resemble an ID class, most of them do.
    assert 6 / 20 <= counts[(failures.OOD_KIND, failures.RESEMBLES_CLASS)].base_rate <= 10 / 20
    assert counts[(failures.OOD_KIND, failures.UNEXPLAINED)].errors == 1


def test_without_id_labels_class_categories_are_left_out():
    sets = make_sets(np.random.default_rng(1))
    sets["id"] = failures.SetData(**{**sets["id"].__dict__, "labels": None, "class_names": None})
    analysis = explorer.analyse_errors("id", sets, explorer.id_threshold95(sets["id"].scores))
    categories = {c.category for c in analysis.counts}
    assert failures.RESEMBLES_CLASS not in categories and failures.ATYPICAL not in categories
    assert all(c.nearest_class is None for c in analysis.cases)


def test_failure_csv_has_classes_categories_and_settings():
    sets = make_sets(np.random.default_rng(0))
    analysis = explorer.analyse_errors("id", sets, explorer.id_threshold95(sets["id"].scores))
    text = explorer.failure_csv(analysis.cases, "mfsim", 0.5, {"model_id": "m@1", "t": 5, "steps": 1, "draws": 2})
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == len(analysis.cases) == 6
    assert rows[0]["true_class"] == "Shirt" and "little semantic content" in rows[0]["categories"]
    assert rows[-1]["model_id"] == "m@1" and rows[-1]["draws"] == "2" and rows[0]["cos_stage2"] == "0.9000"


def test_set_labels_give_class_names_of_the_demo_sets():
    labels, names = explorer.set_labels(shipped.ID_SET, [0, 1, 2])
    assert len(labels) == 3 and names[0] == "T-shirt/top" and len(names) == 10
