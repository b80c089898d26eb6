"""Write docs/screenshots/*.png and docs/screenshots/timings.json, and the timings table in README.md:

    python tests/e2e/take_screenshots.py [--out DIR] [--no-readme]
    python tests/e2e/take_screenshots.py --from-json docs/screenshots/timings.json   # only rewrite the README table

Starts the app on a free port, visits every page in headless Chromium like a user (same session), times the first
page and each interaction (a timestep change, a DDIM-steps change, a score change, the map's stored projection, a lasso
on the map and following a selected image to How DLSR works),
prints the timings and writes them, with the machine and the date, to timings.json beside the screenshots, then
puts them in README.md between the `timings:start` / `timings:end` markers. Timings taken while other jobs run are
noisy: the JSON and the table record the load average at the start and the end.
"""

import argparse
import datetime
import json
import os
import platform
import sys
from pathlib import Path

# Run as a script: make both this folder (streamlit_browser) and the repository (dlsr_core) importable.
sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[2])]

from streamlit_browser import REPO, StreamlitServer, missing_requirements, visit_all  # noqa: E402

README = REPO / "README.md"
MARKERS = ("<!-- timings:start -->", "<!-- timings:end -->")
# What each timing means, in the order of the README table; names not listed here are left out of the table.
TIMING_ROWS = (
    ("first_page_from_start", "Home page usable after `streamlit run` starts"),
    ("score_timestep_change", "Score page: timestep 5 → 6 (sample images re-scored)"),
    ("score_timestep_back_cached", "Score page: back to t = 5 (a setting seen before)"),
    ("score_duplicate_upload", "Score page: upload one image twice (both scored, shown as one score)"),
    ("how_dlsr_works", "How DLSR works: first visit (the walkthrough and the horizontal-flip panel)"),
    ("distributions", "Score distributions: first visit (every set, 5 methods, LR included)"),
    ("distributions_steps_change", "Score distributions: DDIM steps 1 → 2"),
    ("distributions_steps_back_cached", "Score distributions: back to 1 step (kept per setting)"),
    ("distributions_fig3_view", "Score distributions: open the Fig. 3 view (first-epoch model scores every set)"),
    ("distributions_fig4_sweep", "Score distributions: Fig. 4 sweep, 8 timesteps × 300 images per set"),
    ("feature_map_shown", "Feature map: first visit until the UMAP is on screen (stored projection)"),
    ("feature_map_score_change", "Feature map: score MFsim → MSE (same positions, recoloured)"),
    (
        "feature_map_lasso_selection",
        "Feature map: lasso a group of points, from the mouse's release until their image cards are shown",
    ),
    ("follow_to_how_dlsr_works", "Feature map → How DLSR works: follow a selected image's link"),
    ("failure_cases", "Failure cases: first visit"),
    ("compare_models", "Compare models: first visit (the loaded model against its first epoch, every set)"),
    ("feature_vs_pixel", "Feature vs pixel: first visit (6 images through the pixel DDPM and DLSR)"),
    ("train_page_reruns_in_5s_after_the_run", "Train page: script reruns in 5 s after the run ended (count)"),
    ("experiment_zip_upload", "Experiment / data: upload a ZIP of 16 images as a set until it is in the set table"),
)


def timings_markdown(record: dict) -> str:
    """The README table for a timings.json record."""
    values = {**record["seconds"], **record["counts"]}
    machine = record["machine"]
    lines = [
        f"Measured by `{record['command']}` on {record['date'][:10]} ({machine['cpu_count']} CPU cores, torch "
        f"{machine['torch']}; load average {machine['load_average_1min']:.1f} at the start and "
        f"{record['load_average_1min_at_end']:.1f} at the end; near 0 on a quiet machine, higher when other jobs ran):",
        "",
        "| what | time |",
        "|---|---|",
    ]
    for name, meaning in TIMING_ROWS:
        if name in values:
            value = values[name]
            lines.append(f"| {meaning} | {value:.0f} |" if "reruns" in name else f"| {meaning} | {value:.1f} s |")
    return "\n".join(lines)


def update_readme(record: dict, path: Path = README) -> bool:
    """Replace the text between the timing markers of `path`; False when the markers are missing."""
    text = path.read_text()
    start, end = (text.find(marker) for marker in MARKERS)
    if start < 0 or end < start:
        return False
    path.write_text(text[: start + len(MARKERS[0])] + "\n" + timings_markdown(record) + "\n" + text[end:])
    return True


def machine() -> dict[str, object]:
    import torch

    return {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "load_average_1min": os.getloadavg()[0],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "docs" / "screenshots"))
    parser.add_argument("--no-readme", action="store_true", help="do not rewrite the timings table in README.md")
    parser.add_argument("--from-json", help="only rewrite the README table from this timings.json")
    args = parser.parse_args()
    if args.from_json:
        return 0 if update_readme(json.loads(Path(args.from_json).read_text())) else 1
    reason = missing_requirements()
    if reason:
        print(f"cannot take screenshots: {reason}", file=sys.stderr)
        return 2
    before = machine()
    with StreamlitServer() as server:
        timings = visit_all(server, Path(args.out))
    for name, value in timings.items():
        print(f"{name}: {value:.2f}" + ("" if "reruns" in name else " s"))
    record = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python tests/e2e/take_screenshots.py",
        "machine": before,
        "load_average_1min_at_end": os.getloadavg()[0],
        "seconds": {name: round(value, 3) for name, value in timings.items() if "reruns" not in name},
        "counts": {name: value for name, value in timings.items() if "reruns" in name},
    }
    path = Path(args.out) / "timings.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"{path}")
    if not args.no_readme:
        print(f"README timings table {'updated' if update_readme(record) else 'not found (no markers)'}")
    for shot in sorted(Path(args.out).glob("*.png")):
        print(f"{shot}: {shot.stat().st_size / 1000:.0f} kB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
