"""A real browser (headless Chromium) on the live dashboard and on the offline report.

Screenshots of each page are written under the test's temporary folder. `.ci/run` installs
Debian's chromium and chromium-driver when they are missing; elsewhere the tests skip
without them.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from search.report import build_app, write_report
from tests import db

pytestmark = pytest.mark.slow  # a browser process


def _trial(number: int, value: float | None, state: TrialState = TrialState.COMPLETE) -> object:
    return create_trial(
        params={"lr": 0.01 * (number + 1), "optimizer": ["sgd", "adam"][number % 2]},
        distributions={
            "lr": FloatDistribution(1e-4, 1.0, log=True),
            "optimizer": CategoricalDistribution(["sgd", "adam"]),
        },  # fmt: skip
        value=value,
        state=state,
        intermediate_values={1: 0.3 + 0.01 * number, 2: value if value is not None else 0.35},
        user_attrs={"epochs_done": 2, "train_seconds": 3.0},
    )


@pytest.fixture
def browser() -> Iterator[object]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        if os.environ.get("CI"):
            raise AssertionError("CI needs chromium and chromedriver (.ci/run installs them)")
        pytest.skip("no chromium/chromedriver")
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1200,1600"):  # fmt: skip
        options.add_argument(flag)
    session = webdriver.Chrome(options=options, service=webdriver.ChromeService(driver))
    try:
        yield session
    finally:
        session.quit()


@pytest.fixture
def served(tmp_path: Path, study_name: str) -> Iterator[tuple[str, optuna.Study]]:
    """The dashboard over a study with two trials, on a free port of 127.0.0.1."""
    from werkzeug.serving import make_server

    url = f"sqlite:///{tmp_path / 'studies.db'}"
    study = optuna.create_study(study_name=study_name, storage=db.storage(url),
                                direction="maximize")  # fmt: skip
    study.add_trials([_trial(0, 0.9), _trial(1, None, TrialState.PRUNED)])
    server = make_server("127.0.0.1", 0, build_app(url, refresh_s=0.5).server, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", study
    finally:
        server.shutdown()
        thread.join(timeout=10)


def _read(
    browser: object, by: str, selector: str, until: object = bool, timeout: float = 30
) -> str:
    """The text of the element once ``until(text)`` holds. The page redraws on a timer and
    replaces its elements, so an element found a moment ago can be gone: each try finds it
    again, and a stale one is simply tried again."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    def text(driver: object) -> str | bool:
        value = driver.find_element(by, selector).text
        return value if until(value) else False

    ignored = (NoSuchElementException, StaleElementReferenceException)
    return WebDriverWait(browser, timeout, ignored_exceptions=ignored).until(text)


def _wait_for_text(browser: object, selector: str, text: str, timeout: float = 30) -> None:
    from selenium.webdriver.common.by import By

    _read(browser, By.CSS_SELECTOR, selector, lambda shown: text in shown, timeout)


def _click(browser: object, by: str, selector: str, timeout: float = 30) -> None:
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    def click(driver: object) -> bool:
        driver.find_element(by, selector).click()
        return True

    ignored = (NoSuchElementException, StaleElementReferenceException)
    WebDriverWait(browser, timeout, ignored_exceptions=ignored).until(click)


def test_the_dashboard_shows_the_database_and_a_new_trial_without_a_reload(
    browser: object, served: tuple[str, optuna.Study], tmp_path: Path, study_name: str
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    address, study = served
    browser.get(address + "/")
    row = _read(browser, By.ID, f"study-{study_name}")
    assert "0.9000 (#0)" in row and " 2 " in f" {row} "  # best, and 2 trials
    browser.save_screenshot(str(tmp_path / "studies.png"))

    marker = browser.execute_script("window.notReloaded = true; return window.notReloaded")
    study.add_trial(_trial(2, 0.95))  # a driver writes while the page is open
    _wait_for_text(browser, f"#study-{study_name}", "0.9500 (#2)")
    assert browser.execute_script("return window.notReloaded") is marker  # same page

    _click(browser, By.LINK_TEXT, study_name)
    _wait_for_text(browser, "#counts", "Trials: COMPLETE 2, PRUNED 1.")
    # History, importance, parallel coordinates, learning curves: four graphs drawn.
    WebDriverWait(browser, 30).until(
        lambda b: len(b.find_elements(By.CSS_SELECTOR, ".js-plotly-plot")) >= 4
    )
    best = _read(
        browser, By.XPATH, "//h2[text()='Best trials']/following-sibling::*[1]//tbody/tr[1]"
    )
    assert best.startswith("2 0.9500")  # the best trial heads the table
    browser.save_screenshot(str(tmp_path / "study.png"))

    # Two studies side by side: ticked on the studies page (the ticks survive the redraws
    # a landing trial causes), then compared.
    other = optuna.create_study(study_name=f"{study_name}-b", storage=study._storage,
                                direction="maximize")  # fmt: skip
    other.add_trials([_trial(0, 0.7), _trial(1, 0.8)])
    browser.get(address + "/")
    _wait_for_text(browser, "#compare-pick", f"{study_name}-b")
    for name in (study_name, f"{study_name}-b"):
        _click(browser, By.XPATH, f"//div[@id='compare-pick']//input[@value='{name}']")
    study.add_trial(_trial(3, 0.5))  # the listing redraws
    _wait_for_text(browser, f"#study-{study_name}", " 4 ")
    _click(browser, By.ID, "compare-link")
    _wait_for_text(browser, "h1", f"Compare {study_name}, {study_name}-b")
    table = _read(browser, By.XPATH, "//h2[text()='Studies']/following-sibling::*[1]//tbody")
    assert "0.9500 (#2)" in table and "0.8000 (#1)" in table
    WebDriverWait(browser, 30).until(
        lambda b: len(b.find_elements(By.CSS_SELECTOR, ".js-plotly-plot")) >= 2
    )
    browser.save_screenshot(str(tmp_path / "compare.png"))


def test_the_report_opens_offline(browser: object, tmp_path: Path, study_name: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url = f"sqlite:///{tmp_path / 'studies.db'}"
    study = optuna.create_study(study_name=study_name, storage=db.storage(url),
                                direction="maximize")  # fmt: skip
    study.add_trials([_trial(n, 0.5 + n / 100) for n in range(6)])
    page = write_report(url, study_name, tmp_path / "report.html")
    # No network at all: the page must bring everything it draws with.
    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd(
        "Network.emulateNetworkConditions",
        {"offline": True, "latency": 0, "downloadThroughput": 0, "uploadThroughput": 0},
    )
    browser.get(page.resolve().as_uri())
    # History, importance, parallel coordinates, learning curves, worker slots: every figure
    # of the page drawn once plotly.js is unpacked.
    figures = page.read_text().count('<script type="text/x-plotly-figure">')
    assert figures == 5
    WebDriverWait(browser, 30).until(
        lambda b: len(b.find_elements(By.CSS_SELECTOR, ".js-plotly-plot")) == figures
    )
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []
    fetched = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    assert [name for name in fetched if name.startswith(("http:", "https:"))] == []
    browser.save_screenshot(str(tmp_path / "report.png"))
