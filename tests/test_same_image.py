"""The same image gets the same score and layer profile on every page and in the CLI, whatever it is batched with.

`score --images fmnist_real_0.png` alone gave MFsim -0.992975 and stage 4 at 54.6 %, beside a second file -0.992591
and 69.2 %: the backbone's last bits depended on the batch, and the noise is keyed by those bits. Here one demo ID
image is scored alone, in a batch of 2, of 9 and from a dataset, through the app's upload path, the app's demo-set
path (cached features, as How DLSR works uses them) and the CLI.
"""

import csv
import io

import pytest
import shipped
import torch

from dlsr_core import explorer
from dlsr_core.backbones import create_feature_extractor
from dlsr_core.cli import main

torch.set_num_threads(1)
TARGET = 0  # position in the demo ID set
OTHERS = [("demo:letters", 3), ("demo:digits", 7), ("demo:textures", 1), ("demo:fashion_mnist_rotated", 2)] + [
    (shipped.ID_SET, i) for i in (11, 12, 13, 14)
]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """(path of the target image, paths of 8 other images), PNG copies of demo images."""
    folder = tmp_path_factory.mktemp("same_image")
    target = folder / "fmnist_real_0.png"
    target.write_bytes(explorer.encode_png(explorer.dataset_images(shipped.ID_SET, [TARGET])[0]))
    others = []
    for number, (spec, index) in enumerate(OTHERS):
        path = folder / f"other_{number}.png"
        path.write_bytes(explorer.encode_png(explorer.dataset_images(spec, [index])[0]))
        others.append(path)
    return target, others


@pytest.fixture(scope="module")
def reference(detector):
    id_features = explorer.load_features(detector, shipped.ID_SET)
    return id_features, explorer.score_matrix(detector, id_features.features, 5, with_lr=False)


def _app_upload(detector, reference, paths):
    """The Score-images path: decode in memory, embed, score against the ID reference; the target is first."""
    extractor = create_feature_extractor(
        detector.backbone, detector.backbone_weights(), "cpu", detector.feature_options
    )
    batch = explorer.prepare_uploads(extractor, detector.input_size, [(p.name, p.read_bytes()) for p in paths])
    result = explorer.score_uploads(detector, batch.features, batch.names, reference, "mfsim", 5)[0]
    return result.score, result.id_percentile, tuple(result.profile.worse_than), result.profile.sentence


def test_app_upload_and_demo_set_agree_in_every_batching(detector, files, reference):
    target, others = files
    id_features, arrays = reference
    seen = {
        "alone": _app_upload(detector, arrays, [target]),
        "batch of 2": _app_upload(detector, arrays, [target, others[0]]),
        "batch of 9": _app_upload(detector, arrays, [target, *others]),
    }
    row = int((id_features.indices == TARGET).nonzero()[0, 0])
    trace = explorer.trace_image(detector, id_features.features[row], arrays, "mfsim", 5)
    seen["demo set (How DLSR works)"] = (
        trace.score,
        trace.id_percentile,
        tuple(trace.profile.worse_than),
        trace.profile.sentence,
    )
    assert len(set(seen.values())) == 1, seen


def _cli_row(out, *source) -> dict[str, str]:
    """The target's row of `score SOURCE --explain` (the first file, first in its folder too), without its name."""
    assert main(["score", *source, "--explain", "-t", "5", "-o", str(out), "--quiet"]) == 0
    row = next(csv.DictReader(io.StringIO(out.read_text())))
    row.pop("item")
    return row


def test_cli_agrees_with_the_app_in_every_batching(detector, files, reference, tmp_path):
    target, others = files
    _, arrays = reference
    rows = {
        "alone": _cli_row(tmp_path / "1.csv", "--images", str(target)),
        "batch of 2": _cli_row(tmp_path / "2.csv", "--images", str(target), str(others[0])),
        "batch of 9": _cli_row(tmp_path / "9.csv", "--images", str(target), *map(str, others)),
        "folder dataset": _cli_row(tmp_path / "d.csv", "-d", f"folder:{target.parent}"),
    }
    assert all(row == rows["alone"] for row in rows.values()), rows
    score, id_percentile, stages, sentence = _app_upload(detector, arrays, [target])
    expected = rows["alone"]
    assert expected["mfsim"] == f"{score:.6g}"
    assert expected["id_pct"] == explorer.percent_text(id_percentile, 2)
    assert [expected[f"pct_stage{i + 1}"] for i in range(len(stages))] == [explorer.percent_text(p, 2) for p in stages]
    assert expected["explanation"] == sentence
