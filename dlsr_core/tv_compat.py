"""Make ``import torchvision`` (and therefore ``import timm``) work on a CPU-only torch.

Why this module exists: torchvision 0.28.0 is the only release pinned to torch 2.13.0, and its
compiled extension ``_C.so`` links against CUDA libraries. On the CPU build of torch that
extension fails to load, and ``torchvision/_meta_registrations.py`` then calls
``torch.library.register_fake("torchvision::nms")`` for an operator that was never defined, so
``import torchvision`` dies with ``RuntimeError: operator torchvision::nms does not exist`` (and
``import timm`` with it). Nothing else in torchvision needs the extension at import time.

The fix is contained here: before torchvision is first imported we try to load torchvision's own
extension exactly as torchvision would. If that works (normal installs, GPU machines) we do
nothing else. Only if ``torchvision::nms`` is still missing afterwards do we define the
``nms``/``qnms`` schemas ourselves and register a small pure-torch CPU kernel, which is enough
for the import (and for a direct ``torch.ops.torchvision.nms`` call) to succeed. The project
never uses NMS; the kernel exists so the registered op is correct rather than a stub.

Importing this module applies the fix once; ``dlsr_core/__init__.py`` imports it first.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys

import torch

__all__ = ["SHIM_INSTALLED", "greedy_nms", "install"]

_NMS_SCHEMA = "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"
_QNMS_SCHEMA = "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"

# Keeps the Library objects alive: a torch.library.Library unregisters its ops when collected.
_libraries: list[torch.library.Library] = []


def greedy_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression with torchvision's semantics.

    Args:
        boxes: (N, 4) boxes as (x1, y1, x2, y2).
        scores: (N,) scores.
        iou_threshold: a box is dropped when its IoU with an already kept box is > this value.

    Returns:
        (K,) int64 indices of the kept boxes, in decreasing order of score.
    """
    if boxes.dim() != 2 or boxes.size(1) != 4:
        raise ValueError(f"boxes must have shape (N, 4), got {tuple(boxes.shape)}")
    if scores.dim() != 1 or scores.size(0) != boxes.size(0):
        raise ValueError(f"scores must have shape ({boxes.size(0)},), got {tuple(scores.shape)}")
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    b = boxes.double()
    x1, y1, x2, y2 = b.unbind(dim=1)
    areas = (x2 - x1) * (y2 - y1)
    order = torch.argsort(scores, descending=True, stable=True)
    suppressed = torch.zeros(boxes.size(0), dtype=torch.bool, device=boxes.device)
    keep: list[int] = []
    for i in order.tolist():
        if suppressed[i]:
            continue
        keep.append(i)
        w = (torch.minimum(x2[i], x2) - torch.maximum(x1[i], x1)).clamp(min=0)
        h = (torch.minimum(y2[i], y2) - torch.maximum(y1[i], y1)).clamp(min=0)
        inter = w * h
        iou = inter / (areas[i] + areas - inter)
        suppressed |= iou > iou_threshold
    return torch.tensor(keep, dtype=torch.long, device=boxes.device)


def _quantized_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    # torchvision passes integer representations of quantized tensors; IoU is scale-invariant,
    # so computing it on the raw integer coordinates gives the same decisions.
    if boxes.is_quantized:
        boxes = boxes.dequantize()
    if scores.is_quantized:
        scores = scores.dequantize()
    return greedy_nms(boxes.float(), scores.float(), iou_threshold)


def _has_nms_op() -> bool:
    try:
        torch.ops.torchvision.nms  # noqa: B018  (attribute access is the existence check)
    except (AttributeError, RuntimeError):
        return False
    return True


def _load_torchvision_extension() -> None:
    """Load torchvision's ``_C`` the way torchvision does, without importing torchvision."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return
    lib_dir = next(iter(spec.submodule_search_locations))
    if os.name == "nt":
        os.add_dll_directory(lib_dir)
    finder = importlib.machinery.FileFinder(
        lib_dir,
        (
            importlib.machinery.ExtensionFileLoader,
            importlib.machinery.EXTENSION_SUFFIXES,
        ),
    )
    ext = finder.find_spec("_C")
    if ext is None or ext.origin is None:
        return
    try:
        torch.ops.load_library(ext.origin)
    except (OSError, RuntimeError):
        # Expected on a CPU torch with torchvision 0.28.0; torchvision itself tolerates it too.
        pass


def install() -> bool:
    """Define ``torchvision::nms``/``qnms`` if (and only if) torchvision cannot provide them.

    Returns:
        True when the pure-torch fallback was registered by this call, False when nothing was
        needed (torchvision absent, already imported, or its own extension loaded).
    """
    if "torchvision" in sys.modules or importlib.util.find_spec("torchvision") is None:
        return False
    if _has_nms_op():
        return False
    _load_torchvision_extension()
    if _has_nms_op():
        return False
    lib = torch.library.Library("torchvision", "DEF")
    lib.define(_NMS_SCHEMA)
    lib.define(_QNMS_SCHEMA)
    lib.impl("nms", greedy_nms, "CPU")
    lib.impl("qnms", _quantized_nms, "CPU")
    _libraries.append(lib)
    return True


SHIM_INSTALLED: bool = install()
