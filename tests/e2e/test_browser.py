"""End to end: the real `streamlit run app.py` server, every page loaded in headless Chromium, screenshots saved,
interactions timed (printed with -s; tests/e2e/take_screenshots.py also writes them to docs/screenshots/timings.json).

Skips (with the reason) when chromium, chromedriver or selenium are missing, or the shipped model is absent.
Set DLSR_SCREENSHOTS_DIR to keep the screenshots (tests/e2e/take_screenshots.py writes docs/screenshots/).
"""

import os
from pathlib import Path

import pytest
from streamlit_browser import MAX_SCREENSHOT_BYTES, PAGES, StreamlitServer, missing_requirements, visit_all

from dlsr_core import explorer
from dlsr_core.checkpoint import LAST_NAME


@pytest.mark.e2e
def test_every_page_renders_in_a_real_browser(tmp_path):
    reason = missing_requirements()
    if reason:
        pytest.skip(reason)
    if not (explorer.default_run_dir() / LAST_NAME).is_file():
        pytest.skip(f"no shipped model at {explorer.default_run_dir()}")
    out = Path(os.environ.get("DLSR_SCREENSHOTS_DIR", tmp_path))
    with StreamlitServer() as server:
        try:
            timings = visit_all(server, out)
        except AssertionError as error:
            raise AssertionError(f"{error}\n--- server log ---\n{server.output()}") from error
    print("\n" + "\n".join(f"{name}: {value:.2f}" for name, value in timings.items()))
    measured = (
        "experiment_zip_upload",  # a set uploaded as a ZIP is in the Experiment / data page's table
        "score_timestep_change",
        "distributions_steps_change",
        "feature_map_score_change",
        "feature_map_shown",
        "feature_map_lasso_selection",  # a lasso drawn with the mouse lists the selected images
        "follow_to_how_dlsr_works",  # their link opens How DLSR works on that image (checked there)
    )
    for name in measured:
        assert name in timings, f"{name} was not measured"
    # A finished training run must not keep the Train page re-running (it used to refresh every second).
    assert timings["train_page_reruns_in_5s_after_the_run"] == 0
    for page in PAGES:
        shot = out / f"{page.name}.png"
        assert shot.is_file() and 0 < shot.stat().st_size < MAX_SCREENSHOT_BYTES
    assert "Traceback" not in server.output()
