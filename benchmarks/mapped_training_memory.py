"""Peak resident memory of training on a feature set larger than it: a synthetic 1,000,000 x 720 set (2.9 GB).

The set is written in the feature cache's format without ever being in memory whole, then, each in a fresh process:
(a) one epoch of LFDN training reading it memory-mapped (what `python -m dlsr_core train` does), and (b) for
comparison, loading it the in-memory way. Prints the numbers and writes JSON:

    python -m benchmarks.mapped_training_memory --out benchmarks/results/mapped_training_memory.json

Peak RSS is the kernel's high-water mark of the measured process's resident set (VmHWM in /proc/self/status, which
counts mapped file pages while they are resident; the data themselves stay in the page cache, outside the process).
ru_maxrss would not do here: Linux carries the parent's resident size at fork into the child's ru_maxrss across exec.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from dlsr_core.cache import cache_key

KEY_ARGUMENTS = ("synthetic-1m", "synthetic", "random", 224)
STAGES = (24, 32, 56, 160, 448)  # EfficientNet-B4's stage sizes: 720 in all


def _chunks(rows: int, dim: int, chunk: int):
    """The synthetic features, chunk by chunk, the same every time (each chunk has its own seed)."""
    for number, begin in enumerate(range(0, rows, chunk)):
        generator = torch.Generator().manual_seed(number)
        yield torch.randn(min(chunk, rows - begin), dim, generator=generator)


def write_synthetic_cache(path: Path, rows: int, dim: int, chunk: int = 50_000) -> None:
    """A valid feature-cache file of `rows` x `dim` standard normal float32 values, streamed to disk in two passes
    (the first computes the payload checksum that the header must hold)."""
    import hashlib

    digest = hashlib.sha256()
    for block in _chunks(rows, dim, chunk):
        digest.update(block.numpy().tobytes())
    for begin in range(0, rows, chunk):
        digest.update(torch.arange(begin, min(begin + chunk, rows), dtype=torch.int64).numpy().tobytes())
    feature_bytes = rows * dim * 4
    metadata = {
        **cache_key(*KEY_ARGUMENTS),
        "stage_dims": json.dumps(list(STAGES)),
        "skipped": "0",
        "dataset_name": "synthetic",
        "extract_seconds": "0",
        "checksum": digest.hexdigest(),
    }
    header = {
        "__metadata__": metadata,
        "features": {"dtype": "F32", "shape": [rows, dim], "data_offsets": [0, feature_bytes]},
        "indices": {"dtype": "I64", "shape": [rows], "data_offsets": [feature_bytes, feature_bytes + rows * 8]},
    }
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)  # safetensors: data starts 8-byte aligned
    with open(path, "wb") as stream:
        stream.write(struct.pack("<Q", len(encoded)) + encoded)
        for block in _chunks(rows, dim, chunk):
            stream.write(block.numpy().tobytes())
        for begin in range(0, rows, chunk):
            stream.write(torch.arange(begin, min(begin + chunk, rows), dtype=torch.int64).numpy().tobytes())


PEAK_RSS_MIB = """
def peak_rss_mib():
    try:
        status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
        return int(status["VmHWM"].split()[0]) / 1024
    except (OSError, KeyError):  # not Linux: ru_maxrss (KiB on Linux, bytes on macOS)
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
"""

MAPPED_TRAINING = (
    PEAK_RSS_MIB
    + """
import json, time
from pathlib import Path
from dlsr_core.cache import cache_key, load_feature_set
from dlsr_core.diffusion import LFDNConfig
from dlsr_core.training import Provenance, TrainConfig, train
started = time.perf_counter()
feature_set = load_feature_set(Path({path!r}), cache_key(*{key!r}), memory_map=True)
opened = time.perf_counter()
steps = []
result = train(feature_set.features, {run!r}, LFDNConfig(feature_dim=720, width={width}, depth={depth}),
               TrainConfig(epochs=1, batch_size=256, learning_rate=1e-4),
               Provenance("synthetic", "random", 224, (24, 32, 56, 160, 448), "synthetic"),
               on_step=lambda epoch, step, loss: steps.append(step))
print(json.dumps({{"open_and_verify_s": opened - started, "train_s": time.perf_counter() - opened,
                  "steps": len(steps), "loss": result.last_loss, "peak_rss_mib": peak_rss_mib()}}))
"""
)

IN_MEMORY_LOAD = (
    PEAK_RSS_MIB
    + """
import json, time
from pathlib import Path
from dlsr_core.cache import cache_key, load_feature_set
started = time.perf_counter()
feature_set = load_feature_set(Path({path!r}), cache_key(*{key!r}))
print(json.dumps({{"load_s": time.perf_counter() - started, "rows": len(feature_set), "peak_rss_mib": peak_rss_mib()}}))
"""
)


def _fresh_python(code: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent
    )
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--width", type=int, default=256, help="LFDN width (small: the data are what is measured)")
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--skip-in-memory", action="store_true", help="skip the in-memory comparison")
    parser.add_argument("--out", default=None, help="JSON file to write")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dlsr-mapped-") as folder:
        path = Path(folder) / "synthetic.safetensors"
        started = time.perf_counter()
        write_synthetic_cache(path, args.rows, sum(STAGES))
        results: dict = {
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
            "rows": args.rows,
            "dims": sum(STAGES),
            "file_gib": path.stat().st_size / 2**30,
            "write_s": time.perf_counter() - started,
            "writer_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "lfdn": f"{args.width} x {args.depth}",
        }
        print(json.dumps(results), flush=True)
        code = MAPPED_TRAINING.format(
            path=str(path), key=KEY_ARGUMENTS, run=str(Path(folder) / "run"), width=args.width, depth=args.depth
        )
        results["mapped_training_one_epoch"] = _fresh_python(code)
        print(json.dumps({"mapped_training_one_epoch": results["mapped_training_one_epoch"]}), flush=True)
        if not args.skip_in_memory:
            results["in_memory_load"] = _fresh_python(IN_MEMORY_LOAD.format(path=str(path), key=KEY_ARGUMENTS))
            print(json.dumps({"in_memory_load": results["in_memory_load"]}), flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
