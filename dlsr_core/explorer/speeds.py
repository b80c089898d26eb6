"""How fast each method is, in one comparable unit: images per second from a decoded image to its score.

A method's speed "from its cached input" depends on what that input is (a DLSR feature vector, a classifier's
pre-logits, a tensor of pixels), so those rates cannot be compared: the energy score reads a 1,280-number vector and
a linear head, the pixel DDPM runs a UNet five times. `python -m benchmarks.compare` also times every method end to
end on the same decoded images, backbone included, one after another in one process; that is the number to compare.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

BENCHMARK_RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "compare.json"


@dataclass(frozen=True)
class MeasuredSpeeds:
    """End-to-end images/s per method, fastest first (only the methods asked for that the benchmark measured),
    where they were measured, and the DLSR MFsim / pixel DDPM ratio."""

    rows: list[tuple[str, str, float]]  # (method, label, images/s end to end)
    machine: str
    mfsim_over_pixel_ddpm: float | None


def measured_speeds(methods: list[str], path: Path = BENCHMARK_RESULTS) -> MeasuredSpeeds | None:
    """The benchmark's end-to-end speeds of `methods`, sorted fastest first; None when its results are unreadable."""
    try:
        record = json.loads(Path(path).read_text())
        measured = record["methods"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    rows = [
        (name, str(measured[name].get("label", name)), float(measured[name]["images_per_second_end_to_end"]))
        for name in methods
        if isinstance(measured.get(name), dict) and "images_per_second_end_to_end" in measured[name]
    ]
    ratio = record.get("speed_ratio_mfsim_over_pixel_ddpm")
    return MeasuredSpeeds(
        sorted(rows, key=lambda row: -row[2]),
        str(record.get("machine", "")),
        float(ratio) if isinstance(ratio, (int, float)) else None,
    )
