"""Write docs/screenshots/*.png for the README: `python tests/e2e/take_screenshots.py [--out DIR]`.

Starts the app on a free port, visits every page in headless Chromium and prints per-page timings.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from streamlit_browser import REPO, StreamlitServer, missing_requirements, visit_all  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=str(REPO / "docs" / "screenshots"))
    args = parser.parse_args()
    reason = missing_requirements()
    if reason:
        print(f"cannot take screenshots: {reason}", file=sys.stderr)
        return 2
    with StreamlitServer() as server:
        timings = visit_all(server, Path(args.out))
    for name, seconds in timings.items():
        print(f"{name}: {seconds:.1f} s")
    for shot in sorted(Path(args.out).glob("*.png")):
        print(f"{shot}: {shot.stat().st_size / 1000:.0f} kB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
