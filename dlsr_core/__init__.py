"""DLSR Explorer core: unsupervised OOD detection by diffusion-based layer-wise semantic reconstruction."""

from dlsr_core import tv_compat  # noqa: F401
