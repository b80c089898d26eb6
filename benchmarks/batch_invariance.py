"""Does an image's feature vector depend on what it is batched with? And what does batch invariance cost?

    python -m benchmarks.batch_invariance [--images 512] [--images-224 48]

Prints, for the shipped model's backbone on demo Fashion-MNIST images:
1. one backbone pass per batch (`single_pass`, how features were made before fixed chunks): the largest feature
   difference of a batch size / thread count against batch 1 on one thread;
2. `forward` (fixed chunks, dlsr_core.fixed_batches): whether one image's features are bitwise the same alone, in
   batches of 2, 9 and in the whole set, on 1 and 2 threads;
3. throughput, wall and CPU seconds, of both at 64 px and 224 px (best of 3). CPU time is the fairer number on a
   shared machine; compare ratios within one run.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from dlsr_core.backbones import create_feature_extractor
from dlsr_core.data import open_dataset
from dlsr_core.fixed_batches import cpu_chunk
from dlsr_core.scoring import Detector

THREADS = (1, 2)


def _batched(function, images: torch.Tensor, batch: int) -> torch.Tensor:
    return torch.cat([function(images[i : i + batch]) for i in range(0, len(images), batch)])


def _timed(function, count: int, repeats: int = 3) -> tuple[float, float]:
    """(images/s by wall time, images/s by process CPU time), best of `repeats` after a warm-up."""
    function()
    best_wall = best_cpu = float("inf")
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        function()
        best_wall = min(best_wall, time.perf_counter() - wall)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    return count / best_wall, count / best_cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512, help="images for the 64-px measurements")
    parser.add_argument("--images-224", type=int, default=48, help="images for the 224-px measurements")
    args = parser.parse_args()
    detector = Detector.load("checkpoints/default", device="cpu")
    weights, options = detector.backbone_weights(), detector.feature_options
    extractor = create_feature_extractor(detector.backbone, weights, "cpu", options)
    dataset = open_dataset("demo:fashion_mnist_test")
    pictures = [dataset[i] for i in range(max(args.images, args.images_224))]
    x64 = extractor.preprocess(pictures[: args.images], 64)
    target = 5  # the image followed through every batching

    print("1. one pass per batch (before): max |feature difference| against batch 1 on 1 thread")
    torch.set_num_threads(1)
    reference = _batched(extractor.single_pass, x64[:64], 1)
    for threads in THREADS:
        torch.set_num_threads(threads)
        for batch in (1, 2, 8, 32):
            difference = (_batched(extractor.single_pass, x64[:64], batch) - reference).abs().max().item()
            print(f"   threads {threads}, batch {batch:2d}: {difference:.2e}")

    print(f"2. fixed chunks (now): image {target} alone, in batches of 2 and 9, in the set of {len(x64)}")
    torch.set_num_threads(1)
    alone = extractor(x64[target : target + 1])[0]
    for threads in THREADS:
        torch.set_num_threads(threads)
        cases = {
            "alone": extractor(x64[target : target + 1])[0],
            "batch of 2 (second)": extractor(torch.stack([x64[0], x64[target]]))[1],
            "batch of 9 (last)": extractor(torch.cat([x64[20:28], x64[target : target + 1]]))[8],
            "whole set": extractor(x64)[target],
        }
        for name, features in cases.items():
            print(f"   threads {threads}, {name:20s} bitwise equal to 1 thread alone: {torch.equal(features, alone)}")

    print("3. throughput, images/s (wall / CPU); and one image alone, ms (wall / CPU)")
    for size, count in ((64, args.images), (224, args.images_224)):
        images = x64 if size == 64 else extractor.preprocess(pictures[:count], 224)
        batch = extractor.batch_size_for(size)
        for threads in THREADS:
            torch.set_num_threads(threads)
            before = _timed(lambda x=images, b=batch: _batched(extractor.single_pass, x, b), count)
            now = _timed(lambda x=images: extractor(x), count)
            alone = _timed(lambda x=images[:1]: extractor(x), 1)
            print(
                f"   {size} px, {threads} thread(s): one image alone {1000 / alone[0]:.0f} / {1000 / alone[1]:.0f}; "
                f"before (batch {batch}) {before[0]:6.1f} / {before[1]:6.1f}; "
                f"fixed chunks of {cpu_chunk(size)} {now[0]:6.1f} / {now[1]:6.1f}; "
                f"ratio {now[0] / before[0]:.2f} (wall), {now[1] / before[1]:.2f} (CPU)"
            )
    print(f"load average at the end: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
