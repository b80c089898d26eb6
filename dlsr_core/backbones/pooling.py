"""Stage maps to one DLSR feature vector: pool each stage (plain GAP, or the official stride-16 grid), standardize it
per sample across its channels, concatenate."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def pool_and_standardize(
    stage_maps: Sequence[torch.Tensor],
    eps: float = 1e-6,
    pooling: str = "gap",
    reductions: Sequence[int] | None = None,
) -> torch.Tensor:
    """Global-average-pool each stage, standardize it per sample, and concatenate.

    Each stage's pooled vector ``f`` (B, C_i) becomes ``(f - mean) / (std + eps)`` with mean and
    (unbiased) std taken over that stage's C_i channels of the same sample, so every stage
    contributes on the same scale however many channels it has.

    Args:
        stage_maps: list of (B, C_i, H_i, W_i) feature maps, any float dtype.
        eps: added to the std to keep constant stages finite.
        pooling: ``"gap"`` pools each map as it is; ``"stride16-grid"`` first resamples every map
            to the stride-16 grid (bilinear, align_corners=True), as the authors' released code
            does, so a pooled value is the mean of the resampled map, not of the original map.
        reductions: each map's stride (needed by ``"stride16-grid"`` to find the grid).

    Returns:
        (B, sum C_i) float32.
    """
    if len(stage_maps) == 0:
        raise ValueError("pool_and_standardize needs at least one stage map")
    if pooling not in ("gap", "stride16-grid"):
        raise ValueError(f"pooling must be 'gap' or 'stride16-grid', got {pooling!r}")
    batch = stage_maps[0].shape[0]
    for i, fmap in enumerate(stage_maps):
        if fmap.dim() != 4 or fmap.shape[0] != batch:
            raise ValueError(f"stage {i}: expected a (B={batch}, C, H, W) map, got shape {tuple(fmap.shape)}")
        if fmap.shape[1] < 2:
            raise ValueError(f"stage {i}: need at least 2 channels to standardize, got {fmap.shape[1]}")
    if pooling == "gap":
        pooled_stages = [fmap.float().mean(dim=(2, 3)) for fmap in stage_maps]
    else:
        grid = _stride16_grid(stage_maps, reductions)
        pooled_stages = [
            torch.nn.functional.interpolate(fmap.float(), size=grid, mode="bilinear", align_corners=True).mean(
                dim=(2, 3)
            )
            for fmap in stage_maps
        ]
    parts = []
    for pooled in pooled_stages:
        mean = pooled.mean(dim=1, keepdim=True)
        std = pooled.std(dim=1, keepdim=True)
        parts.append((pooled - mean) / (std + eps))
    return torch.cat(parts, dim=1)


def _stride16_grid(stage_maps: Sequence[torch.Tensor], reductions: Sequence[int] | None) -> tuple[int, int]:
    """(H, W) of the stride-16 grid: the stride-16 map's size, else the first map's size scaled to stride 16."""
    if reductions is None or len(reductions) != len(stage_maps):
        raise ValueError("stride16-grid pooling needs the stride (reduction) of every stage map")
    for fmap, reduction in zip(stage_maps, reductions, strict=True):
        if reduction == 16:
            return int(fmap.shape[2]), int(fmap.shape[3])
    first, reduction = stage_maps[0], reductions[0]
    return max(1, first.shape[2] * reduction // 16), max(1, first.shape[3] * reduction // 16)
