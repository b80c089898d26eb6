"""Write docs/screenshots/*.png and docs/screenshots/timings.json for the README:

    python tests/e2e/take_screenshots.py [--out DIR]

Starts the app on a free port, visits every page in headless Chromium like a user (same session), times the first
page and each interaction (a timestep change, a DDIM-steps change, a score change, the map's cached projection),
prints the timings and writes them, with the machine and the date, to timings.json beside the screenshots. Timings
taken while other jobs run are noisy: the JSON records the load average at the start and the end.
"""

import argparse
import datetime
import json
import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from streamlit_browser import REPO, StreamlitServer, missing_requirements, visit_all  # noqa: E402


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
    args = parser.parse_args()
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
    for shot in sorted(Path(args.out).glob("*.png")):
        print(f"{shot}: {shot.stat().st_size / 1000:.0f} kB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
