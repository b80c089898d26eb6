"""One "percent of ID images below" everywhere: one formula (ties count half), one way of writing it."""

import numpy as np
import pytest
import shipped
import torch

from dlsr_core import explorer

torch.set_num_threads(1)


def test_percent_below_counts_ties_half():
    reference = np.array([3.0, 1.0, 2.0, 2.0])  # unsorted on purpose
    np.testing.assert_allclose(explorer.percent_below(reference, [0.5, 2.0, 2.5, 9.0, 1.0]), [0, 50, 75, 100, 12.5])
    assert explorer.percent_below([4.0, 4.0], 4.0).tolist() == [50.0]
    with pytest.raises(ValueError, match="at least one"):
        explorer.percent_below([], 1.0)


@pytest.mark.parametrize(
    "percent,decimals,text",
    [
        (100 * 1991 / 2000, 1, "99.6"),  # 99.55 is stored as 99.5499…; it still rounds half up
        (100 * 1991 / 2000, 2, "99.55"),
        (100 * 1 / 2000, 1, "0.1"),  # never "0" for an image above one reference image
        (100 * 1999.5 / 2000, 1, "99.9"),  # never "100" for one that is not above all
        (100.0, 1, "100"),
        (0.0, 2, "0"),
        (37.725, 2, "37.73"),
    ],
)
def test_percent_text(percent, decimals, text):
    assert explorer.percent_text(percent, decimals) == text


@pytest.fixture(scope="module")
def rigged(detector):
    """The ID reference scored as usual, with its MFsim scores replaced so that the first ID image lies above 1,990
    of the 2,000 and ties with 2 more: percent below = (1990 + 0.5 * 2) / 2000 = 99.55 %."""
    id_features = explorer.load_features(detector, shipped.ID_SET).features
    reference = explorer.score_matrix(detector, id_features, 5, with_lr=False)
    image = float(detector.score_features(id_features[:1], 5).mfsim[0])
    values = np.concatenate([np.full(1990, image - 1.0), [image, image], np.full(8, image + 1.0)])
    return {**reference, "mfsim": values}, id_features[0]


def test_1991_of_2000_reads_the_same_everywhere(detector, rigged):
    reference, features = rigged
    upload = explorer.score_uploads(detector, features[None], ["shirt.png"], reference, "mfsim", 5)[0]
    trace = explorer.trace_image(detector, features, reference, "mfsim", 5)
    names = explorer.stage_names(detector.backbone, tuple(detector.stage_dims))
    scored = explorer.score_matrix(detector, features[None], 5, with_lr=False)
    _, rows = explorer.explanation_columns(names, reference, scored, "mfsim")
    on_map = explorer.percent_below(reference["mfsim"], scored["mfsim"])[0]
    texts = {explorer.percent_text(p) for p in (upload.id_percentile, trace.id_percentile, on_map)}
    assert texts == {"99.6"}
    assert rows[0][len(names)] == "99.55"  # the CSV writes two decimals of the same number
