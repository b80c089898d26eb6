"""Start `streamlit run app.py` on a free port and visit every page in headless Chromium (selenium).

Used by tests/e2e/test_browser.py and tests/e2e/take_screenshots.py. Needs /usr/bin/chromium, /usr/bin/chromedriver
and the `selenium` package.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from browser_follow import follow_first_image, lasso_on_map, wait_plot_title

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("DLSR_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("DLSR_CHROMEDRIVER", "/usr/bin/chromedriver")
CHROME_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--window-size=1400,1000",
)
MAX_SCREENSHOT_BYTES = 300_000


@dataclass(frozen=True)
class PageCheck:
    """A page's URL path, text that proves it rendered, and an optional button to press first."""

    name: str
    link: str  # the sidebar navigation label
    expect: str
    click: str | None = None
    timeout: float = 240.0
    plot_title: str | None = None  # a Plotly chart title that proves the chart was drawn (the feature map)
    shot_first: bool = False  # take the page's screenshot before its interactions (they leave the page)
    choose: tuple[tuple[str, str], ...] = ()  # (selectbox label, option) to pick before clicking


MAIN_SLIDERS = '[data-testid="stMain"] [data-testid="stSlider"] input[type="range"]'

PAGES = (
    PageCheck("home", "Home / model", "Loaded model"),
    PageCheck("score", "Score images", "95%-TPR threshold", click="Use sample images"),
    PageCheck("how_dlsr_works", "How DLSR works", "AUROC, horizontal flip"),
    PageCheck("distributions", "Score distributions", "Metrics (percent)"),
    PageCheck("feature_map", "Feature map (UMAP)", "UMAP of", plot_title="UMAP (cosine)", shot_first=True),
    PageCheck("failure_cases", "Failure cases", "OOD accepted as ID"),
    PageCheck("compare_models", "Compare models", "AUROC on the same sets"),
    PageCheck("feature_vs_pixel", "Feature vs pixel", "Scores and their references"),
    # The default training set is the 60,000-image Fashion-MNIST training split; a demo set keeps the test short.
    PageCheck(
        "train",
        "Train",
        "is now selectable",
        click="Start training",
        choose=(("Built-in set", "demo:fashion_mnist_rotated"),),
    ),
    # Last: the set it uploads joins the loaded model's experiment, which the pages above are meant to open without.
    PageCheck("experiment", "Experiment / data", "Add a set"),
)
UPLOADED_SET = "my_shapes"  # the set the browser uploads as a ZIP on the Experiment / data page


def missing_requirements() -> str | None:
    """Why the browser test cannot run here, or None."""
    for path, what in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromedriver")):
        if not Path(path).exists() and shutil.which(path) is None:
            return f"{what} not found at {path} (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "the selenium package is not installed (pip install selenium)"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class StreamlitServer:
    """`streamlit run app.py --server.headless true --server.port <free port>` as a context manager."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        # Runs trained from the Train page and uploaded sets go to throwaway folders, never into the repository's
        # checkpoints/ or the user's data folder.
        self.checkpoints = tempfile.TemporaryDirectory(prefix="dlsr-e2e-runs-")
        self.data = tempfile.TemporaryDirectory(prefix="dlsr-e2e-data-")
        env = {"DLSR_CHECKPOINTS_DIR": self.checkpoints.name, "DLSR_DATA_DIR": self.data.name, **(env or {})}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen | None = None
        self.log = tempfile.TemporaryFile()
        self.started_at = 0.0

    def __enter__(self) -> StreamlitServer:
        self.started_at = time.perf_counter()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streamlit",
                "run",
                "app.py",
                "--server.headless",
                "true",
                "--server.port",
                str(self.port),
                "--server.address",
                "127.0.0.1",
                "--browser.gatherUsageStats",
                "false",
            ],
            cwd=REPO,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"streamlit exited early:\n{self.output()}")
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"streamlit did not answer on {self.url} within 60 s:\n{self.output()}")

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-5000:]

    def __exit__(self, *exc) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.checkpoints.cleanup()
        self.data.cleanup()


def make_driver(user_data_dir: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={user_data_dir}")
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def small_png(png: bytes) -> bytes:
    """Re-encode a screenshot with a 128-colour palette so README images stay small."""
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    for colours in (128, 64, 32):
        buffer = io.BytesIO()
        image.quantize(colors=colours, method=Image.Quantize.MEDIANCUT).save(buffer, format="PNG", optimize=True)
        if buffer.tell() < MAX_SCREENSHOT_BYTES:
            break
    return buffer.getvalue()


def click_button(driver, label: str, timeout: float) -> None:
    """Click the button labelled `label`, waiting for it to be rendered."""
    from selenium.webdriver.common.by import By

    deadline = time.time() + timeout
    while time.time() < deadline:
        for button in driver.find_elements(By.TAG_NAME, "button"):
            try:
                if button.text.strip() == label:
                    button.click()
                    return
            except Exception:  # re-rendered while we looked: look again
                break
        time.sleep(0.3)
    raise AssertionError(f"no button {label!r} within {timeout:.0f} s")


def _click_nav_link(driver, label: str, timeout: float) -> None:
    from selenium.webdriver.common.by import By

    deadline = time.time() + timeout
    while time.time() < deadline:
        for link in driver.find_elements(By.CSS_SELECTOR, '[data-testid="stSidebarNavLink"]'):
            try:
                if label in link.text:
                    link.click()
                    return
            except Exception:  # re-rendered while we looked: look again
                break
        time.sleep(0.3)
    raise AssertionError(f"no sidebar link {label!r} within {timeout:.0f} s")


def _wait_idle(driver, timeout: float) -> None:
    """Wait until the app's script is no longer running (Streamlit marks it on the stApp element)."""
    from selenium.webdriver.common.by import By

    deadline = time.time() + timeout
    while time.time() < deadline:
        if driver.find_elements(By.CSS_SELECTOR, '[data-testid="stApp"]:not([data-test-script-state="running"])'):
            return
        time.sleep(0.3)


def _wait_text(driver, text: str, timeout: float) -> float:
    from selenium.webdriver.common.by import By

    started = time.perf_counter()
    deadline = time.time() + timeout
    while time.time() < deadline:
        if text in driver.find_element(By.TAG_NAME, "body").text:
            return time.perf_counter() - started
        exceptions = driver.find_elements(By.CSS_SELECTOR, '[data-testid="stException"]')
        if exceptions:
            raise AssertionError(f"the page shows an exception: {exceptions[0].text[:500]}")
        time.sleep(0.3)
    raise AssertionError(
        f"{text!r} did not appear within {timeout:.0f} s; page text:\n"
        f"{driver.find_element(By.TAG_NAME, 'body').text[:1500]}"
    )


def _press_on_slider(
    driver, index: int, target: str, selector: str = "body", timeout: float = 120, key: str = "ARROW_RIGHT"
) -> float:
    """Press `key` (→ or ←) on the `index`-th slider and time, with the browser's own clock, until `target` appears
    in the text of an element matching `selector` — the page's answer to the change."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    # Sliders of the page itself (the sidebar holds the noise-draws slider, hence stMain); an <input type=range> is
    # visually hidden, so it is focused by script.
    slider = driver.find_elements(By.CSS_SELECTOR, MAIN_SLIDERS)[index]
    driver.execute_script("arguments[0].focus();", slider)
    _watch_for(driver, target, selector)
    ActionChains(driver).send_keys(getattr(Keys, key)).perform()
    return _watched_seconds(driver, target, timeout)


def _watch_for(driver, target: str, selector: str) -> None:
    """Start an in-page timer that stops when `target` shows up in an element matching `selector` (polling
    textContent inside the page is cheap; WebDriver's body.text takes seconds on a large page)."""
    driver.execute_script(
        """
        window.__dlsrChange = {start: performance.now(), done: null};
        const timer = setInterval(() => {
          const texts = [...document.querySelectorAll(arguments[1])].map((e) => e.textContent);
          if (texts.some((text) => text.includes(arguments[0]))) {
            window.__dlsrChange.done = performance.now();
            clearInterval(timer);
          }
        }, 10);
        """,
        target,
        selector,
    )


def _watched_seconds(driver, target: str, timeout: float) -> float:
    deadline = time.time() + timeout
    while time.time() < deadline:
        change = driver.execute_script("return window.__dlsrChange;")
        if change["done"] is not None:
            return (change["done"] - change["start"]) / 1000.0
        time.sleep(0.1)
    raise AssertionError(f"{target!r} did not appear within {timeout} s after the change")


def _change_timestep(driver, step: int = 1, timeout: float = 60) -> float:
    """Move the Score page's timestep slider one step (→ for +1, ← for -1) and time until the page shows the
    re-scored result."""
    from selenium.webdriver.common.by import By

    slider = driver.find_elements(By.CSS_SELECTOR, MAIN_SLIDERS)[0]
    target = f"at t={int(slider.get_attribute('value')) + step},"
    key = "ARROW_RIGHT" if step > 0 else "ARROW_LEFT"
    return _press_on_slider(driver, 0, target, '[data-testid="stAlert"]', timeout, key)


def _choose_option(driver, label: str, option: str, timeout: float = 30) -> None:
    """Open the selectbox labelled `label` and click `option` (Streamlit renders the options in a popover)."""
    from selenium.webdriver.common.by import By

    deadline = time.time() + timeout
    while time.time() < deadline:
        boxes = [b for b in driver.find_elements(By.CSS_SELECTOR, '[data-testid="stSelectbox"]') if label in b.text]
        if boxes:
            boxes[0].find_element(By.CSS_SELECTOR, '[aria-haspopup="listbox"]').click()  # the "Open" arrow
            for _ in range(50):
                for item in driver.find_elements(By.CSS_SELECTOR, '[role="option"]'):
                    if item.text.strip() == option:
                        item.click()
                        return
                time.sleep(0.1)
        time.sleep(0.3)
    raise AssertionError(f"could not choose {option!r} in the selectbox {label!r}")


def _count_reruns(driver, seconds: float) -> int:
    """How many times the app's script starts running during `seconds` of doing nothing (an idle page: 0)."""
    driver.execute_script(
        """
        window.__dlsrReruns = 0;
        const app = document.querySelector('[data-testid="stApp"]');
        new MutationObserver(() => {
          if (app.getAttribute('data-test-script-state') === 'running') window.__dlsrReruns += 1;
        }).observe(app, {attributes: true, attributeFilter: ['data-test-script-state']});
        """
    )
    time.sleep(seconds)
    return int(driver.execute_script("return window.__dlsrReruns;"))


def _choose_radio(driver, option: str, expect: str, timeout: float = 120) -> float:
    """Click the radio option labelled `option`; seconds until `expect` is on the page."""
    from selenium.webdriver.common.by import By

    _watch_for(driver, expect, "body")
    labels = [label for label in driver.find_elements(By.CSS_SELECTOR, '[data-testid="stRadio"] label')]
    next(label for label in labels if label.text.strip() == option).click()
    return _watched_seconds(driver, expect, timeout)


def _screenshot(driver, path: Path, scroll_to_radio: str | None = None, scroll_to_heading: str | None = None) -> None:
    """Save the visible window (mouse parked on the title, charts given a second to draw), scrolled so that the
    radio group containing `scroll_to_radio`, or the heading holding `scroll_to_heading`, is at the top when given."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    ActionChains(driver).move_to_element(driver.find_element(By.TAG_NAME, "h1")).perform()
    target = None
    if scroll_to_radio:
        target = next(
            r for r in driver.find_elements(By.CSS_SELECTOR, '[data-testid="stRadio"]') if scroll_to_radio in r.text
        )
    elif scroll_to_heading:
        target = next(h for h in driver.find_elements(By.CSS_SELECTOR, "h2, h3") if scroll_to_heading in h.text)
    if target is not None:
        driver.execute_script("arguments[0].scrollIntoView({block: 'start'});", target)
    time.sleep(1.0)
    path.write_bytes(small_png(driver.get_screenshot_as_png()))
    if target is not None:
        driver.execute_script("document.querySelector('h1').scrollIntoView({block: 'start'});")


def _interactions(driver, page: PageCheck, timings: dict[str, float], extra_shots: Path) -> None:
    """Time the interactions a user makes on `page`, each from the input to the page's new answer, then undo each
    (also timed: the setting was seen before, so its answer is cached) — the settings persist across pages, and the
    next pages are meant to open on the defaults (the Feature map's stored projection is for those)."""
    if page.name == "score":
        timings["score_timestep_change"] = _change_timestep(driver, +1)
        _wait_idle(driver, page.timeout)
        timings["score_timestep_back_cached"] = _change_timestep(driver, -1)
    elif page.name == "distributions":
        # The steps slider is the second one; 1 -> 2 DDIM steps re-scores every set (then kept per setting).
        timings["distributions_steps_change"] = _press_on_slider(driver, 1, ", 2 DDIM step(s)")
        _wait_idle(driver, page.timeout)
        timings["distributions_steps_back_cached"] = _press_on_slider(driver, 1, ", 1 DDIM step(s)", key="ARROW_LEFT")
        _wait_idle(driver, page.timeout)
        fig3 = "First vs last epoch (paper Fig. 3)"
        timings["distributions_fig3_view"] = _choose_radio(driver, fig3, "The separation")
        _wait_idle(driver, page.timeout)
        _screenshot(driver, extra_shots / "distributions_fig3.png", scroll_to_radio="paper Fig. 3")
        timings["distributions_fig4_view"] = _choose_radio(driver, "Timestep sweep (paper Fig. 4)", "Run sweep")
        _wait_idle(driver, page.timeout)
        click_button(driver, "Run sweep", page.timeout)
        _watch_for(driver, "Averaged over the OOD sets", "body")
        timings["distributions_fig4_sweep"] = _watched_seconds(driver, "Averaged over the OOD sets", 180)
        _wait_idle(driver, page.timeout)
        _screenshot(driver, extra_shots / "distributions_fig4.png", scroll_to_radio="paper Fig. 4")
        _choose_radio(driver, "ID vs each OOD set", "Histogram method")
    elif page.name == "feature_map":
        for score, name in (("MSE", "feature_map_score_change"), ("MFsim", "feature_map_score_back")):
            _wait_idle(driver, page.timeout)
            _watch_for(driver, f"hover: {score}", "body")
            _choose_option(driver, "Score", score)
            timings[name] = _watched_seconds(driver, f"hover: {score}", 120)
        _wait_idle(driver, page.timeout)
        wait_plot_title(driver, "UMAP (cosine)", 60)
        timings["feature_map_lasso_selection"] = lasso_on_map(driver, page.timeout)
        _wait_idle(driver, page.timeout)
        _screenshot(driver, extra_shots / "feature_map_selection.png", scroll_to_heading="Selected images")
        timings["follow_to_how_dlsr_works"] = follow_first_image(driver, page.timeout)
    elif page.name == "failure_cases":
        _screenshot(driver, extra_shots / "failure_cases_browse.png", scroll_to_heading="Browse the errors")
    elif page.name == "train":
        # A timer tick already queued when the run ended may still arrive once on a loaded machine; let it land.
        _wait_idle(driver, page.timeout)
        time.sleep(2.0)
        _wait_idle(driver, page.timeout)
        timings["train_page_reruns_in_5s_after_the_run"] = _count_reruns(driver, 5.0)
    elif page.name == "experiment":
        timings["experiment_zip_upload"] = _upload_zip_set(driver, page.timeout)


def _shapes_zip(path: Path) -> None:
    """A ZIP of a small ImageFolder set: shapes/<class>/<n>.png for two classes, and a text file (skipped)."""
    import io
    import zipfile

    from PIL import Image, ImageDraw

    with zipfile.ZipFile(path, "w") as archive:
        for label, draw_shape in (("circle", "ellipse"), ("square", "rectangle")):
            for n in range(8):
                image = Image.new("RGB", (28, 28))
                getattr(ImageDraw.Draw(image), draw_shape)([4 + n % 3, 4, 22, 22 - n % 4], fill=(255, 255, 255))
                buffer = io.BytesIO()
                image.save(buffer, "PNG")
                archive.writestr(f"shapes/{label}/{n}.png", buffer.getvalue())
        archive.writestr("shapes/README.txt", "not an image")


def _upload_zip_set(driver, timeout: float) -> float:
    """On the Experiment / data page: upload a ZIP as a new OOD set; seconds until it is in the set table."""
    from selenium.webdriver.common.by import By

    with tempfile.TemporaryDirectory(prefix="dlsr-e2e-zip-") as folder:
        archive = Path(folder) / "shapes.zip"
        _shapes_zip(archive)
        next(tab for tab in driver.find_elements(By.CSS_SELECTOR, '[role="tab"]') if "uploading" in tab.text).click()
        started = time.perf_counter()
        driver.find_element(By.CSS_SELECTOR, 'input[type="file"]').send_keys(str(archive))
        _wait_text(driver, "shapes.zip", timeout)  # listed by the uploader once it has arrived
        name = driver.find_element(By.CSS_SELECTOR, 'input[aria-label="Set name"]')
        name.send_keys(UPLOADED_SET)
        click_button(driver, "Store and add as OOD set", timeout)
        _wait_text(driver, "1 file(s) skipped", timeout)  # README.txt
        deadline = time.time() + timeout
        while time.time() < deadline:
            tables = driver.find_elements(By.CSS_SELECTOR, '[data-testid="stTable"]')
            if tables and UPLOADED_SET in tables[0].text:
                return time.perf_counter() - started
            time.sleep(0.3)
        raise AssertionError(f"the uploaded set {UPLOADED_SET!r} did not appear in the set table")


def _upload_duplicates(driver, timeout: float = 120) -> float:
    """Upload one demo image twice under two names; the page must give both the same score. Returns seconds."""
    from selenium.webdriver.common.by import By

    from dlsr_core.data import open_dataset

    with tempfile.TemporaryDirectory(prefix="dlsr-e2e-upload-") as folder:
        paths = [Path(folder) / name for name in ("shirt.png", "same_shirt.png")]
        open_dataset("demo:fashion_mnist_test")[11].save(paths[0])
        paths[1].write_bytes(paths[0].read_bytes())
        started = time.perf_counter()
        driver.find_element(By.CSS_SELECTOR, 'input[type="file"]').send_keys("\n".join(str(p) for p in paths))
        _wait_text(driver, "Identical files shirt.png, same_shirt.png: one image, one score", timeout)
        return time.perf_counter() - started


def _page_screenshot(driver, page: PageCheck, screenshot_dir: Path) -> None:
    """The page's screenshot, mouse parked on the title (no tooltip in the picture), charts given a second to draw;
    an exception on the page fails the check."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    ActionChains(driver).move_to_element(driver.find_element(By.TAG_NAME, "h1")).perform()
    time.sleep(1.0)
    if driver.find_elements(By.CSS_SELECTOR, '[data-testid="stException"]'):
        raise AssertionError(f"{page.name}: exception on the page")
    (screenshot_dir / f"{page.name}.png").write_bytes(small_png(driver.get_screenshot_as_png()))


def visit_all(server: StreamlitServer, screenshot_dir: Path, pages=PAGES) -> dict[str, float]:
    """Load each page, press its button, wait for its text, check for exceptions, save a screenshot.

    Returns seconds per page (until its text is shown and its script is idle);
    'feature_map_shown' is when the map's UMAP was on screen (on a first visit with the default settings: the
    stored projection); 'first_page_from_start' is the time from launching the server to a usable Home page; and the
    timed interactions of `_interactions` (train_page_reruns_in_5s_after_the_run is a count, not seconds).
    """
    screenshot_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="dlsr-chrome-") as profile:
        driver = make_driver(profile)
        try:
            for page in pages:
                started = time.perf_counter()
                if page is pages[0]:
                    driver.get(server.url)
                else:  # navigate like a user, in the same session: the model must not be reloaded
                    _click_nav_link(driver, page.link, page.timeout)
                if page.click:
                    _wait_text(driver, page.click, page.timeout)
                    _wait_idle(driver, page.timeout)
                    for label, option in page.choose:
                        _choose_option(driver, label, option)
                    click_button(driver, page.click, page.timeout)
                _wait_text(driver, page.expect, page.timeout)
                if page.name == "home":
                    timings["first_page_from_start"] = time.perf_counter() - server.started_at
                _wait_idle(driver, page.timeout)
                if page.plot_title:
                    timings[f"{page.name}_shown"] = wait_plot_title(driver, page.plot_title, 60) - started
                timings[page.name] = time.perf_counter() - started
                if page.shot_first:
                    _page_screenshot(driver, page, screenshot_dir)
                _interactions(driver, page, timings, screenshot_dir)
                _wait_idle(driver, page.timeout)
                if not page.shot_first:
                    _page_screenshot(driver, page, screenshot_dir)
                if page.name == "score":  # after the screenshot, which shows the sample images
                    timings["score_duplicate_upload"] = _upload_duplicates(driver)
                    _wait_idle(driver, page.timeout)
        finally:
            driver.quit()
    return timings
