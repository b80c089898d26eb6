"""A thin, streamlit-free façade over dlsr_core for the explorer app: one call per page action.

Pages keep only widgets, caching and plotting; everything that can be tested without a browser lives here, one
module per concern: `sets` (demo sets, features, images), `runs` (checkpoints), `scores` (scores, thresholds,
verdicts), `uploads`, `explanation` (layer profiles), `walkthrough` (one image traced step by step), `shifts` (what
counts as OOD), `distributions` (evaluation, sweep), `failures`, `maps` (feature-map inputs) and `training_job`
(background training). Every public name is re-exported here, so pages write `explorer.<name>`.
"""

from dlsr_core.explorer.comparison import (
    METHOD_LABELS,
    PIXEL_IMAGES_PER_SET,
    MethodComparison,
    addable_methods,
    compare_methods,
    load_baselines,
)
from dlsr_core.explorer.distributions import Evaluation, baseline_split, evaluate_sets, metrics_rows, sweep
from dlsr_core.explorer.explanation import (
    LayerProfile,
    StageName,
    StageReference,
    explanation_columns,
    layer_profiles,
    percent_text,
    stage_names,
    stage_reference,
    stage_values,
)
from dlsr_core.explorer.failures import FailureCase, failure_cases, failure_csv
from dlsr_core.explorer.feature_vs_pixel import FeatureVsPixel, feature_vs_pixel, load_pixel_model, pixel_model_path
from dlsr_core.explorer.maps import MapPoints, map_points
from dlsr_core.explorer.runs import (
    ModelSummary,
    available_scores,
    checkpoints_root,
    default_run_dir,
    list_run_dirs,
    run_fingerprint,
    summarize,
)
from dlsr_core.explorer.scores import id_threshold95, marker_rows, score_arrays, score_matrix, verdict
from dlsr_core.explorer.sets import (
    BASELINE_TRAIN_SET,
    DEMO_ID_SET,
    DEMO_OOD_SETS,
    SCORE_LABELS,
    cached_features_only,
    dataset_images,
    load_features,
    subsample_rows,
)
from dlsr_core.explorer.shifts import (
    SHIFT_LABELS,
    SHIFT_SAMPLE,
    ShiftComparison,
    compare_shift,
    shift_rows,
    shifted_features,
)
from dlsr_core.explorer.training_job import TrainingJob, TrainRequest, TrainState
from dlsr_core.explorer.uploads import (
    MAX_UPLOAD_BYTES,
    PREVIEW_SIZE,
    UPLOAD_TYPES,
    ImageScore,
    UploadBatch,
    decode_uploads,
    embed_images,
    encode_png,
    prepare_uploads,
    sample_uploads,
    score_uploads,
    thumbnail_uri,
)
from dlsr_core.explorer.walkthrough import Trace, noised_features, trace_image

__all__ = [
    "BASELINE_TRAIN_SET",
    "DEMO_ID_SET",
    "DEMO_OOD_SETS",
    "MAX_UPLOAD_BYTES",
    "PREVIEW_SIZE",
    "SCORE_LABELS",
    "SHIFT_LABELS",
    "SHIFT_SAMPLE",
    "UPLOAD_TYPES",
    "Evaluation",
    "FailureCase",
    "FeatureVsPixel",
    "ImageScore",
    "METHOD_LABELS",
    "LayerProfile",
    "MapPoints",
    "MethodComparison",
    "PIXEL_IMAGES_PER_SET",
    "ModelSummary",
    "ShiftComparison",
    "StageName",
    "StageReference",
    "Trace",
    "TrainRequest",
    "TrainState",
    "TrainingJob",
    "UploadBatch",
    "addable_methods",
    "available_scores",
    "baseline_split",
    "cached_features_only",
    "checkpoints_root",
    "compare_methods",
    "compare_shift",
    "dataset_images",
    "decode_uploads",
    "default_run_dir",
    "embed_images",
    "encode_png",
    "evaluate_sets",
    "explanation_columns",
    "failure_cases",
    "failure_csv",
    "feature_vs_pixel",
    "id_threshold95",
    "layer_profiles",
    "list_run_dirs",
    "load_baselines",
    "load_pixel_model",
    "load_features",
    "map_points",
    "pixel_model_path",
    "marker_rows",
    "metrics_rows",
    "noised_features",
    "percent_text",
    "prepare_uploads",
    "run_fingerprint",
    "sample_uploads",
    "score_arrays",
    "score_matrix",
    "score_uploads",
    "shift_rows",
    "shifted_features",
    "stage_names",
    "stage_reference",
    "stage_values",
    "subsample_rows",
    "summarize",
    "sweep",
    "thumbnail_uri",
    "trace_image",
    "verdict",
]
