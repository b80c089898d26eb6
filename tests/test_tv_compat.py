import pytest
import torch

from dlsr_core import tv_compat


def reference_nms(boxes: list[list[float]], scores: list[float], thr: float) -> list[int]:
    """Textbook greedy NMS written independently with plain Python floats."""

    def iou(a: list[float], b: list[float]) -> float:
        w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = w * h
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        return inter / union

    remaining = sorted(range(len(boxes)), key=lambda i: -scores[i])
    keep = []
    while remaining:
        best = remaining.pop(0)
        keep.append(best)
        remaining = [i for i in remaining if iou(boxes[best], boxes[i]) <= thr]
    return keep


KNOWN_BOXES = [
    [0.0, 0.0, 10.0, 10.0],  # overlaps box 3 with IoU 1.0 and box 1 with IoU 0.68
    [1.0, 1.0, 11.0, 11.0],
    [20.0, 20.0, 30.0, 30.0],  # isolated
    [0.0, 0.0, 10.0, 10.0],
    [5.0, 0.0, 15.0, 10.0],  # IoU 1/3 with box 3
]
KNOWN_SCORES = [0.9, 0.8, 0.7, 0.95, 0.6]


def test_import_timm_and_torchvision_work():
    import timm
    import torchvision
    from torchvision import transforms

    assert timm.list_models("tf_efficientnet_lite0")
    t = transforms.Compose([transforms.ToTensor()])
    assert callable(t)
    assert hasattr(torchvision, "__version__")


def test_shim_installed_exactly_when_torchvision_extension_missing():
    import torchvision.extension

    # The fallback must never replace torchvision's own kernels.
    assert tv_compat.SHIM_INSTALLED == (not torchvision.extension._has_ops())
    assert tv_compat.install() is False  # idempotent: the op exists now


@pytest.mark.parametrize(
    ("thr", "expected"),
    [(0.5, [3, 2, 4]), (0.3, [3, 2]), (0.99, [3, 1, 2, 4])],
)
def test_nms_op_known_example(thr, expected):
    boxes = torch.tensor(KNOWN_BOXES)
    scores = torch.tensor(KNOWN_SCORES)
    assert reference_nms(KNOWN_BOXES, KNOWN_SCORES, thr) == expected
    assert torch.ops.torchvision.nms(boxes, scores, thr).tolist() == expected
    assert tv_compat.greedy_nms(boxes, scores, thr).tolist() == expected


def test_nms_matches_reference_on_random_boxes():
    gen = torch.Generator().manual_seed(0)
    xy = torch.rand(40, 2, generator=gen) * 50
    wh = torch.rand(40, 2, generator=gen) * 20 + 1
    boxes = torch.cat([xy, xy + wh], dim=1)
    scores = torch.rand(40, generator=gen)
    for thr in (0.1, 0.3, 0.5, 0.7):
        expected = reference_nms(boxes.tolist(), scores.tolist(), thr)
        got = torch.ops.torchvision.nms(boxes, scores, thr)
        assert got.dtype == torch.long
        assert got.tolist() == expected


def test_nms_empty_and_bad_shapes():
    out = tv_compat.greedy_nms(torch.zeros(0, 4), torch.zeros(0), 0.5)
    assert out.shape == (0,) and out.dtype == torch.long
    with pytest.raises(ValueError):
        tv_compat.greedy_nms(torch.zeros(3, 5), torch.zeros(3), 0.5)
    with pytest.raises(ValueError):
        tv_compat.greedy_nms(torch.zeros(3, 4), torch.zeros(2), 0.5)


@pytest.mark.skipif(not tv_compat.SHIM_INSTALLED, reason="torchvision's own qnms needs quantized inputs")
def test_qnms_fallback_on_integer_boxes():
    boxes = torch.tensor(KNOWN_BOXES).to(torch.uint8)
    scores = (torch.tensor(KNOWN_SCORES) * 100).to(torch.uint8)
    got = torch.ops.torchvision.qnms(boxes, scores, 0.5).tolist()
    assert got == reference_nms(KNOWN_BOXES, KNOWN_SCORES, 0.5)
