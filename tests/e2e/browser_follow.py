"""Browser steps of the analyst's workflow on a real page (used by streamlit_browser.visit_all): wait for a Plotly
chart's title, draw a lasso on the feature map with the mouse, and follow an image's link to How DLSR works."""

from __future__ import annotations

import time
from urllib.parse import parse_qs, urlparse

MAP = '[data-testid="stPlotlyChart"] .js-plotly-plot'
CARD_LINK = "Trace in How DLSR works"  # on every image card of the selection grid


def wait_plot_title(driver, text: str, timeout: float) -> float:
    """Wait until a Plotly chart's title holds `text` (the chart has been drawn); returns time.perf_counter() then."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if driver.execute_script(
            "return [...document.querySelectorAll('.js-plotly-plot .gtitle')].some(t => t.textContent.includes("
            "arguments[0]));",
            text,
        ):
            return time.perf_counter()
        time.sleep(0.2)
    raise AssertionError(f"no Plotly chart titled {text!r} within {timeout:.0f} s")


def lasso_on_map(driver, timeout: float = 120, half: int = 45) -> float:
    """Drag a lasso (the map's default drag mode) around an ID point, as a user does with the mouse; returns
    seconds from the release of the mouse until the selected images' cards are on the page."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from streamlit_browser import _watch_for, _watched_seconds

    plot = driver.find_element(By.CSS_SELECTOR, MAP)
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", plot)
    # The ID point nearest the plot's centre, in pixels from the plot's top-left corner.
    left, top, width, height = driver.execute_script(
        """
        const gd = document.querySelector(arguments[0]); const layout = gd._fullLayout; const trace = gd._fullData[0];
        const cx = layout._size.l + layout._size.w / 2, cy = layout._size.t + layout._size.h / 2;
        let best = null;
        for (let i = 0; i < trace.x.length; i++) {
          const px = layout._size.l + layout.xaxis.l2p(trace.x[i]), py = layout._size.t + layout.yaxis.l2p(trace.y[i]);
          const d = (px - cx) ** 2 + (py - cy) ** 2;
          if (best === null || d < best[2]) best = [px, py, d];
        }
        return [best[0], best[1], gd.clientWidth, gd.clientHeight];
        """,
        MAP,
    )
    _watch_for(driver, CARD_LINK, "body")  # the cards come last: their links mean the grid is on screen
    # The user waits from the release of the mouse, not while drawing: the timer restarts at the mouseup.
    driver.execute_script(
        "window.addEventListener('mouseup', () => { window.__dlsrChange.start = performance.now(); },"
        " {once: true, capture: true});"
    )
    # Selenium's offsets are from the element's centre.
    chain = ActionChains(driver, duration=50).move_to_element_with_offset(
        plot, int(left - width / 2 - half), int(top - height / 2 - half)
    )
    chain.click_and_hold()
    for dx, dy in ((2 * half, 0), (0, 2 * half), (-2 * half, 0), (0, -2 * half + 2)):
        for _ in range(4):  # several small moves: the lasso's path follows the mouse
            chain.move_by_offset(dx // 4, dy // 4)
    chain.release().perform()
    return _watched_seconds(driver, CARD_LINK, timeout)


def follow_first_image(driver, timeout: float = 120) -> float:
    """Click the first "Trace in How DLSR works" link; check that How DLSR works opens on that very image (its set
    and number, and the address bar's image reference); returns seconds until it shows."""
    from selenium.webdriver.common.by import By
    from streamlit_browser import _wait_idle, _wait_text

    link = next(a for a in driver.find_elements(By.TAG_NAME, "a") if "Trace in How DLSR works" in a.text)
    token = parse_qs(urlparse(link.get_attribute("href")).query)["image"][0]
    kind, index, spec = token.split(":", 2)
    assert kind == "set", token
    started = time.perf_counter()
    link.click()
    _wait_text(driver, "1 · The image", timeout)
    _wait_idle(driver, timeout)
    seconds = time.perf_counter() - started
    number = driver.find_element(By.CSS_SELECTOR, 'input[aria-label="Image number"]').get_attribute("value")
    assert number == index, (number, token)
    assert parse_qs(urlparse(driver.current_url).query).get("image") == [token], driver.current_url
    assert f"#{index}" in driver.find_element(By.TAG_NAME, "body").text
    return seconds
