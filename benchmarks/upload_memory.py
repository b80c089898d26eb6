"""Peak memory of decoding a batch of huge uploads: bounded decoding (what the app does) vs full-size decoding.

One command: `python -m benchmarks.upload_memory --out benchmarks/results/upload_memory.json`. Each variant runs in a
fresh process (peak RSS is a per-process high-water mark) on ten 7999 x 7999 RGB PNGs of ~200 kB each — the case from
issue 9. Prints a table and writes JSON. Not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FILES, SIDE = 10, 7999


def _write_png(path: Path) -> None:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (SIDE, SIDE), (10, 200, 30)).save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue())


def _measure(variant: str, png: Path) -> dict:
    """Run in a child: decode the batch the given way and report peak RSS and time."""
    from dlsr_core.data import load_image
    from dlsr_core.explorer.uploads import decode_uploads

    files = [(f"huge_{i}.png", png.read_bytes()) for i in range(FILES)]
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    if variant == "bounded":
        good, errors, notes = decode_uploads(files)
        kept = [image.size for _, image in good]
    else:  # what decode_uploads did before: every file decoded at full size and kept
        images = [load_image(data, max_side=None) for _, data in files]
        kept, errors, notes = [image.size for image in images], [], []
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "variant": variant,
        "files": FILES,
        "file_kib": round(len(files[0][1]) / 1024, 1),
        "kept_sizes": sorted(set(kept)),
        "refused": len(errors),
        "notes": notes[:1],
        "peak_rss_mib": round(peak / 1024, 1),
        "rss_before_decoding_mib": round(baseline / 1024, 1),
        "seconds": round(seconds, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/upload_memory.json")
    parser.add_argument("--child", choices=["bounded", "full"], help=argparse.SUPPRESS)
    parser.add_argument("--png", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_measure(args.child, Path(args.png))))
        return
    rows = []
    png = Path(tempfile.mkdtemp()) / "huge.png"  # made here, so the children's peaks hold only the decoding
    _write_png(png)
    for variant in ("bounded", "full"):
        output = subprocess.run(
            [sys.executable, "-m", "benchmarks.upload_memory", "--child", variant, "--png", str(png)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        rows.append(json.loads(output.strip().splitlines()[-1]))
    for row in rows:
        print(
            f"{row['variant']:>8}: {row['files']} x {SIDE}x{SIDE} PNG ({row['file_kib']} KiB each) -> kept "
            f"{row['kept_sizes']}, peak RSS {row['peak_rss_mib']} MiB (before decoding {row['rss_before_decoding_mib']}"
            f" MiB), {row['seconds']} s"
        )
    png.unlink()
    png.parent.rmdir()
    result = {"machine": platform.platform(), "python": platform.python_version(), "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
