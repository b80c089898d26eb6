"""DLSR Explorer core: unsupervised OOD detection by diffusion-based layer-wise semantic reconstruction.

Images -> multi-stage backbone features (`backbones`, `features`, `cache`) -> LFDN diffusion reconstruction
(`diffusion`, `training`, `checkpoint`) -> scores, higher = more OOD (`scoring`, `baselines`) -> metrics
(`metrics`, `evaluation`). Public names are importable from the package and resolved lazily, so that
`import dlsr_core` stays cheap until a heavy piece (timm, scikit-learn) is actually used.
"""

from importlib import import_module

from dlsr_core import tv_compat  # noqa: F401  (must run before anything imports torchvision or timm)

_PUBLIC = {
    "BACKBONES": "backbones",
    "create_feature_extractor": "backbones",
    "FeatureExtractor": "backbones",
    "WeightsUnavailableError": "backbones",
    "open_dataset": "data",
    "parse_dataset": "data",
    "load_image": "data",
    "list_demo_sets": "data",
    "DatasetError": "data",
    "ImageLoadError": "data",
    "FeatureSet": "features",
    "extract_features": "features",
    "cached_features": "cache",
    "LFDN": "diffusion",
    "LFDNConfig": "diffusion",
    "NoiseSchedule": "diffusion",
    "ddim_reconstruct": "diffusion",
    "official_reconstruct": "diffusion",
    "PRESETS": "presets",
    "get_preset": "presets",
    "FeatureOptions": "presets",
    "ScoringOptions": "presets",
    "TrainConfig": "training",
    "Provenance": "training",
    "train": "training",
    "CheckpointError": "checkpoint",
    "load_checkpoint": "checkpoint",
    "DEFAULT_RUN_DIR": "checkpoint",
    "Detector": "scoring",
    "ScoreResult": "scoring",
    "SCORE_NAMES": "scoring",
    "KNNBaseline": "baselines",
    "MahalanobisBaseline": "baselines",
    "OODMetrics": "metrics",
    "ood_metrics": "metrics",
    "EvaluationSettings": "evaluation",
    "evaluate": "evaluation",
    "timestep_sweep": "evaluation",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'dlsr_core' has no attribute {name!r}")
    return getattr(import_module(f"dlsr_core.{_PUBLIC[name]}"), name)
