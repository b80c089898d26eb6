"""Baselines the paper compares DLSR with, all scored "higher = more OOD" and evaluated with dlsr_core.metrics.

- `distance`: k-NN and Mahalanobis on the same cached DLSR features (unsupervised, like DLSR).
- `pixel_ddpm`: pixel-level diffusion (Graham et al. 2023 design) on the images themselves (unsupervised).
- `feature_ae`: an MLP autoencoder on the cached DLSR features (unsupervised).
- `classifier`: MSP, energy, DICE, ASH-S, ReAct and ViM from pytorch-ood on a small CNN (`cnn`) trained from scratch
  with the ID labels. These need labels; DLSR does not.
- `store`: how all of them are saved and checked before anything is built (safetensors + typed JSON + SHA-256;
  nothing is unpickled); `train`: the recipe of the shipped ones; `pixel_training`: the pixel DDPM's training to a
  held-out-loss plateau; `figures`: the model card's PNGs.
"""

from dlsr_core.baselines.distance import KNNBaseline, MahalanobisBaseline, NotFittedError

__all__ = ["KNNBaseline", "MahalanobisBaseline", "NotFittedError"]
