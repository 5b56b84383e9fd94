"""The app in a real browser: `streamlit run` on 127.0.0.1 driven by headless Chromium.

Needs Debian's chromium and chromium-driver (scripts/browser-deps.sh installs them;
scripts/test.sh runs it). Without them this test fails, it does not skip. The screenshot
of the last state goes to tests/artifacts/ (or $TEST_ARTIFACTS); its path is printed.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import imageio.v3 as iio
import pytest

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS", REPO / "tests" / "artifacts"))
STARTUP_SECONDS = 120
STEP_SECONDS = 300  # one generation on a loaded CI machine, the first one loading the model


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"streamlit exited with {process.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as reply:
                if reply.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"streamlit did not answer on {url} within {STARTUP_SECONDS} s:\n{log.read_text()}")


@pytest.fixture
def app_url(tmp_path):
    """`streamlit run streamlit_app.py` on a free 127.0.0.1 port, on the tiny default."""
    port = _free_port()
    env = {**os.environ, "WORKBENCH_SESSIONS": str(tmp_path / "sessions")}
    env.pop("WORKBENCH_MODEL", None)  # the tiny default, as a user gets it
    log = tmp_path / "streamlit.log"
    command = [sys.executable, "-m", "streamlit", "run", "streamlit_app.py"]
    command += ["--server.port", str(port), "--server.address", "127.0.0.1"]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, process, log)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def browser(tmp_path):
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_path):
        pytest.fail(
            "the browser test needs Debian's chromium and chromium-driver: "
            "run `bash scripts/browser-deps.sh` (as root) or scripts/test.sh, which does"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    options.add_argument("--window-size=1400,1200")
    options.add_experimental_option(
        "prefs",
        {"download.default_directory": str(downloads), "download.prompt_for_download": False},
    )
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.execute_cdp_cmd(
        "Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
    )
    driver.downloads = downloads
    try:
        yield driver
    finally:
        driver.quit()


def test_world_forward_twice_undo_export_mp4(app_url, browser):
    from selenium.webdriver.common.by import By

    page = _Page(browser)
    browser.get(app_url)
    try:
        page.click("//*[@data-testid='stSidebar']//label[normalize-space(.)='World']")
        page.type_into("Denoising steps", "3")
        page.type_into("Prompt", "a quiet street at dawn")
        page.click(_button("Start from prompt"))
        page.wait_for_caption("1 frame")
        for frames in ("2 frames", "3 frames"):
            page.click(_button("Forward"))
            page.wait_for_caption(frames)
        page.click(_button("Undo last frame"))
        page.wait_for_caption("2 frames")
        page.click(_button("Prepare downloads"))
        page.click("//*[@data-testid='stDownloadButton']//button[normalize-space(.)='MP4']")
        video = page.wait_for_download("world-1-frames.mp4")
        assert video.read_bytes()[4:8] == b"ftyp"
        assert len(iio.imread(video, plugin="FFMPEG")) == 2  # start + one forward
        assert not browser.find_elements(By.XPATH, "//*[@data-testid='stException']")
    finally:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / "browser_world.png"
        browser.set_window_size(1400, 2000)  # the whole page: controls, timeline, downloads
        browser.save_screenshot(str(shot))
        print(f"screenshot: {shot}")


def _button(text: str) -> str:
    return f"//button[contains(normalize-space(.), '{text}')]"


class _Page:
    """Waits for Streamlit's reruns: every action waits until its target is ready."""

    def __init__(self, driver):
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver = driver
        self.wait = WebDriverWait(driver, STEP_SECONDS, poll_frequency=0.25)

    def click(self, xpath: str) -> None:
        from selenium.common.exceptions import (
            ElementClickInterceptedException,
            StaleElementReferenceException,
        )
        from selenium.webdriver.common.by import By

        def clicked(driver) -> bool:
            for element in driver.find_elements(By.XPATH, xpath):
                try:
                    if element.is_displayed() and element.is_enabled():
                        element.click()
                        return True
                except (StaleElementReferenceException, ElementClickInterceptedException):
                    return False
            return False

        self.wait.until(clicked, f"no enabled element {xpath}")

    def type_into(self, label: str, text: str) -> None:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys

        xpath = f"//input[@aria-label='{label}']"
        self.wait.until(lambda d: d.find_elements(By.XPATH, xpath), f"no input {label!r}")
        field = self.driver.find_element(By.XPATH, xpath)
        field.send_keys(Keys.CONTROL, "a")
        field.send_keys(text, Keys.ENTER)
        self.wait.until(
            lambda d: d.find_element(By.XPATH, xpath).get_attribute("value") == text,
            f"{label!r} did not take {text!r}",
        )
        time.sleep(1)  # the rerun the value triggers

    def wait_for_caption(self, text: str) -> None:
        from selenium.webdriver.common.by import By

        xpath = f"//*[@data-testid='stCaptionContainer'][normalize-space(.)='{text}']"
        self.wait.until(lambda d: d.find_elements(By.XPATH, xpath), f"no caption {text!r}")

    def wait_for_download(self, name: str) -> Path:
        path = self.driver.downloads / name
        self.wait.until(lambda d: path.is_file() and path.stat().st_size > 0, f"no {name}")
        return path
