"""Throughput in the paper's setting (EfficientNet-B4 @ 224 px, LFDN 1440 x 16): backbone only and with each score.

Made for a GPU (AMP, channels_last, large batches; the paper reports about 1,000 images/s for MSE and MFsim and 274 for
LR on its GPU). With --weights random it needs no network (the speed does not depend on the weights' values); the
LFDN is randomly initialised unless --checkpoint names a trained run. Images are synthetic normalized 224-px tensors
already on the device, so decoding and resizing are not counted. Prints and writes JSON:

    python -m benchmarks.speed_paper --weights random --out benchmarks/results/speed_paper.json
    python -m benchmarks.speed_paper --weights random --device cpu --images 16 --batch-size 8   # CPU smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import time
from pathlib import Path

import torch

from dlsr_core.backbones import create_feature_extractor, select_device
from dlsr_core.checkpoint import CheckpointInfo, LoadedCheckpoint
from dlsr_core.diffusion import LFDN, LFDNConfig
from dlsr_core.presets import get_preset, time_embed_width
from dlsr_core.scoring import Detector


def random_detector(feature_dim: int, stage_dims: tuple[int, ...], preset_name: str, device, width: int, depth: int):
    """A Detector with randomly initialised final and early LFDNs of the preset's architecture (for timing only)."""
    preset = get_preset(preset_name)
    config = LFDNConfig(
        feature_dim=feature_dim,
        width=width,
        depth=depth,
        input_activation=preset.architecture.input_activation,
        time_embed_width=time_embed_width(preset.architecture.time_mlp_width, width, feature_dim),
    )
    loaded = []
    for epoch in (1, 2):
        model = LFDN(config).to(device).eval().requires_grad_(False)
        info = CheckpointInfo(config, "efficientnet_b4", "random", 224, stage_dims, "synthetic", epoch)
        statistics = torch.zeros(feature_dim)
        loaded.append(LoadedCheckpoint(model, info, statistics, statistics, Path(f"random-epoch{epoch}")))
    return Detector(loaded[1], loaded[0], preset.scoring)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def throughput(step, batches: list[torch.Tensor], device: torch.device) -> float:
    """Images/s of `step(batch)` over `batches` after one warm-up batch."""
    step(batches[0])
    _synchronize(device)
    started = time.perf_counter()
    for batch in batches:
        step(batch)
    _synchronize(device)
    return sum(len(batch) for batch in batches) / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="pretrained", help="'random' needs no network")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--preset", default="official", choices=("official", "paper"))
    parser.add_argument("--checkpoint", default=None, help="a trained B4 run (default: random LFDNs)")
    parser.add_argument("--images", type=int, default=8192)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--width", type=int, default=1440)
    parser.add_argument("--depth", type=int, default=16)
    parser.add_argument("--no-amp", dest="amp", action="store_false", help="LFDN in float32 on CUDA")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    device = select_device(args.device)
    preset = get_preset(args.preset)
    extractor = create_feature_extractor("efficientnet_b4", args.weights, device, preset.features)
    if args.checkpoint:
        detector = Detector.load(args.checkpoint, device, preset.scoring)
    else:
        detector = random_detector(
            extractor.feature_dim, extractor.stage_dims, args.preset, device, args.width, args.depth
        )
    generator = torch.Generator().manual_seed(0)
    batches = [
        torch.randn(min(args.batch_size, args.images - start), 3, 224, 224, generator=generator).to(device)
        for start in range(0, args.images, args.batch_size)
    ]
    amp = args.amp and device.type == "cuda"

    def scoring_context():
        return torch.autocast("cuda", dtype=torch.float16) if amp else contextlib.nullcontext()

    def backbone(batch):
        return extractor(batch)

    def with_scores(with_lr: bool):
        def step(batch):
            with scoring_context():
                return detector.score_features(extractor(batch), with_lr=with_lr)

        return step

    features = torch.cat([extractor(batch) for batch in batches[:2]])

    def lfdn_only(batch):
        with scoring_context():
            return detector.score_features(features[: len(batch)], with_lr=False)

    results = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "setting": f"efficientnet_b4 @ 224 px ({args.weights} weights), LFDN {args.width} x {args.depth}, preset "
        f"{args.preset} (sampler {detector.scoring.sampler} from t = {detector.scoring.timestep}), batch "
        f"{args.batch_size}, {args.images} images, channels_last, AMP {'on' if amp else 'off'} for the LFDN "
        "(the backbone uses bf16/fp16 autocast on CUDA)",
        "backbone_images_per_second": throughput(backbone, batches, device),
        "mse_mfsim_images_per_second": throughput(with_scores(False), batches, device),
        "lr_images_per_second": throughput(with_scores(True), batches, device),
        "lfdn_only_vectors_per_second": throughput(lfdn_only, batches[:2], device),
        "paper_images_per_second": {"mse_mfsim": 999.3, "lr": 273.6, "note": "Table 1, the paper's GPU"},
    }
    print(json.dumps(results, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
