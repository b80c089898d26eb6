"""Speed and memory of the shipped default model, measured side by side in one run; prints and writes JSON.

    python -m benchmarks.speed --out benchmarks/results/speed.json

(a) backbone-only images/s vs full scoring images/s (backbone + DDIM reconstruction + scores) on demo images;
(b) re-scoring 10,000 cached feature vectors at a new timestep; (c) cold start (imports, checkpoint, backbone) in a
fresh process; (d) peak resident memory of a full `evaluate` run on a cold cache, in a fresh process; (e) UMAP of
5,000 vectors, first call (numba compilation included) and second call, in a fresh process.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from dlsr_core.backbones import create_feature_extractor
from dlsr_core.checkpoint import DEFAULT_RUN_DIR
from dlsr_core.data import open_dataset
from dlsr_core.scoring import Detector

OOD_SETS = ["demo:digits", "demo:letters", "demo:textures", "demo:fashion_mnist_inverted", "demo:fashion_mnist_rotated"]


def _fresh_python(code: str, env: dict[str, str] | None = None) -> tuple[dict, int]:
    """Run `code` in a new interpreter; returns its last stdout line as JSON and its peak RSS in KiB."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **(env or {})},
        cwd=Path(__file__).resolve().parent.parent,
    )
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return json.loads(result.stdout.strip().splitlines()[-1]), max(peak, before)


def _seconds(action) -> float:
    """Wall time of one call of `action()`."""
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def backbone_vs_full(run_dir: Path, count: int, timestep: int) -> dict:
    detector = Detector.load(run_dir, device="cpu")
    extractor = create_feature_extractor(detector.backbone, weights=detector.info.weights)
    images = [open_dataset("demo:fashion_mnist_test")[i] for i in range(count)]
    batch = extractor.batch_size_for(detector.input_size)
    extractor(extractor.preprocess(images[:batch], detector.input_size))  # warm-up
    started = time.perf_counter()
    features = torch.cat(
        [extractor(extractor.preprocess(images[i : i + batch], detector.input_size)) for i in range(0, count, batch)]
    )
    backbone_seconds = time.perf_counter() - started
    detector.score_features(features[:batch], timestep)  # warm-up
    diffusion_seconds = _seconds(lambda: detector.score_features(features, timestep, with_lr=False))
    diffusion_with_lr_seconds = _seconds(lambda: detector.score_features(features, timestep, with_lr=True))
    return {
        "images": count,
        "backbone_batch_size": batch,
        "backbone_images_per_second": count / backbone_seconds,
        "full_scoring_images_per_second_mse_mfsim": count / (backbone_seconds + diffusion_seconds),
        "full_scoring_images_per_second_with_lr": count / (backbone_seconds + diffusion_with_lr_seconds),
        "diffusion_overhead_percent_mse_mfsim": 100 * diffusion_seconds / backbone_seconds,
        "diffusion_overhead_percent_with_lr": 100 * diffusion_with_lr_seconds / backbone_seconds,
    }


def rescoring(run_dir: Path, count: int, timestep: int) -> dict:
    detector = Detector.load(run_dir, device="cpu")
    features = torch.randn(count, detector.info.config.feature_dim)
    detector.score_features(features[:64], timestep)  # warm-up
    seconds = _seconds(lambda: detector.score_features(features, timestep, with_lr=False))
    with_lr = _seconds(lambda: detector.score_features(features, timestep, with_lr=True))
    return {"vectors": count, "timestep": timestep, "seconds_mse_mfsim": seconds, "seconds_with_lr": with_lr}


COLD_START = """
import json, time
started = time.perf_counter()
from dlsr_core.scoring import Detector
from dlsr_core.backbones import create_feature_extractor
imported = time.perf_counter()
detector = Detector.load({run_dir!r}, device="cpu")
loaded = time.perf_counter()
create_feature_extractor(detector.backbone, weights=detector.info.weights)
done = time.perf_counter()
print(json.dumps({{"imports_s": imported - started, "checkpoint_s": loaded - imported,
                  "backbone_s": done - loaded, "total_s": done - started}}))
"""

FULL_EVALUATION = """
import json, time
from dlsr_core.cli import main
started = time.perf_counter()
code = main(["evaluate", "--checkpoint", {run_dir!r}, "--id", "demo:fashion_mnist_test", "--ood", *{ood!r},
             "--quiet", "-t", "{timestep}"])
print(json.dumps({{"exit_code": code, "seconds": time.perf_counter() - started}}))
"""

UMAP_CALLS = """
import json, time
import numpy as np
from dlsr_core.embedding import umap_2d
features = np.random.default_rng(0).normal(size=({count}, {dim})).astype("float32")
started = time.perf_counter(); umap_2d(features); first = time.perf_counter() - started
started = time.perf_counter(); umap_2d(features); second = time.perf_counter() - started
print(json.dumps({{"vectors": {count}, "dims": {dim}, "first_call_s": first, "second_call_s": second}}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=str(DEFAULT_RUN_DIR))
    parser.add_argument("--images", type=int, default=512, help="demo images for (a)")
    parser.add_argument("--timestep", type=int, default=5)
    parser.add_argument("--out", default=None, help="JSON file to write")
    args = parser.parse_args()
    run_dir = Path(args.checkpoint)
    results: dict = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads",
        "checkpoint": str(run_dir),
    }
    results["a_backbone_vs_full"] = backbone_vs_full(run_dir, args.images, args.timestep)
    print(json.dumps({"a": results["a_backbone_vs_full"]}), flush=True)
    results["b_rescoring_10k"] = rescoring(run_dir, 10_000, args.timestep + 2)
    print(json.dumps({"b": results["b_rescoring_10k"]}), flush=True)
    results["c_cold_start"], _ = _fresh_python(COLD_START.format(run_dir=str(run_dir)))
    print(json.dumps({"c": results["c_cold_start"]}), flush=True)
    with tempfile.TemporaryDirectory() as cache:
        evaluation, peak_kib = _fresh_python(
            FULL_EVALUATION.format(run_dir=str(run_dir), ood=OOD_SETS, timestep=args.timestep),
            env={"DLSR_CACHE_DIR": cache},
        )
    results["d_full_evaluation"] = {**evaluation, "peak_rss_mib": peak_kib / 1024, "cache": "cold"}
    print(json.dumps({"d": results["d_full_evaluation"]}), flush=True)
    dim = Detector.load(run_dir).info.config.feature_dim
    results["e_umap_5000"], _ = _fresh_python(UMAP_CALLS.format(count=5000, dim=dim))
    print(json.dumps({"e": results["e_umap_5000"]}), flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
