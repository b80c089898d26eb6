"""Baselines the paper compares DLSR with, all scored "higher = more OOD" and evaluated with dlsr_core.metrics.

- `distance`: k-NN and Mahalanobis on the same cached DLSR features (unsupervised, like DLSR).
- `pixel_ddpm`: pixel-level diffusion (Graham et al. 2023 design) on the images themselves (unsupervised).
- `feature_ae`: an MLP autoencoder on the cached DLSR features (unsupervised).
- `classifier`: MSP, energy, DICE, ASH-S, ReAct and ViM from pytorch-ood on a linear head trained with the ID labels
  on the backbone's pooled pre-logit features (`prelogits`). These need labels; DLSR does not.
- `store`: how all of them are saved (safetensors + JSON + SHA-256; nothing is unpickled); `train`: the recipe.
"""

from dlsr_core.baselines.distance import KNNBaseline, MahalanobisBaseline, NotFittedError

__all__ = ["KNNBaseline", "MahalanobisBaseline", "NotFittedError"]
