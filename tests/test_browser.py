"""The app in a real browser: `streamlit run` on 127.0.0.1 driven by headless Chromium.

A world walk with an MP4 download; a story's branches (Regenerate and Fork twice, each
shown), a rejected upload explained, the story page opened on its own, a reload
restoring every branch; Cancel stopping a replay.

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
from urllib.parse import parse_qs, urlparse

import imageio.v3 as iio
import pytest

from workbench import chains, store
from workbench.params import GenerationParams
from workbench.session import Session

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS", REPO / "tests" / "artifacts"))
STARTUP_SECONDS = 120
STEP_SECONDS = 300  # one generation on a loaded CI machine, the first one loading the model
# the suite's per-test limit (pyproject.toml), raised above this module's own waits: the
# server's start and a few slow steps, each of which fails the test with its own message
pytestmark = pytest.mark.timeout(STARTUP_SECONDS + 2 * STEP_SECONDS + 180)


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
        print(f"streamlit's log:\n{log.read_text(errors='replace')[-6000:]}")  # on failure
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

    page = _AppPage(browser)
    browser.get(app_url)
    try:
        page.click("//*[@data-testid='stSidebar']//label[normalize-space(.)='World']")
        # with no model chosen the World page runs the shipped world model, and says so
        page.wait_for_text("trained on the rendered world")
        page.click(_button("Start from this view"))  # the rendered world's view of seed 0
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


# -- the work-keeping flows: branches in view, reload restores, downloads, cancel --

BRANCH_PICKER = "//*[@data-testid='stSelectbox'][.//label[normalize-space(.)='Branch']]"


def _strip_sources(page: _AppPage) -> list[str]:
    """The strip's image addresses (Streamlit names media by content: equal images,
    equal addresses)."""
    from selenium.webdriver.common.by import By

    xpath = (  # the strip only, not the Compare section below it
        "//*[@data-testid='stImage'][not(preceding::*[normalize-space(text())="
        "'Compare branches'])]//img"
    )
    return [
        img.get_attribute("src").split("/")[-1]
        for img in page.driver.find_elements(By.XPATH, xpath)
    ]


def _choose(page: _AppPage, picker: str, option: str) -> None:
    page.click(f"{picker}//input")
    page.click(f"//*[@role='option'][normalize-space(.)='{option}']")
    page.wait_for_text(f"Strip of {option}")


def _add_beat(page: _AppPage, text: str) -> None:
    page.type_area("Beat text", text)
    page.click(_button("Add beat"))


def test_story_branches_reload_restore_and_the_story_page(app_url, browser, tmp_path):
    page = _AppPage(browser)
    browser.get(app_url)
    page.type_into("Denoising steps", "2")
    # a rejected reference: its reason in the form, the beat not added, the text kept
    _add_beat(page, "a fox finds a lantern")
    page.wait_for_markdown("a fox finds a lantern")
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    page.upload("Reference image", notes)
    _add_beat(page, "the fox sleeps")
    page.wait_for_text("Not added: the reference image notes.txt")
    assert page.value_of("//textarea[@aria-label='Beat text']") == "the fox sleeps"
    assert not page.has_markdown("the fox sleeps")
    page.click("//*[@data-testid='stFileChipDeleteBtn']/descendant-or-self::button")
    page.click(_button("Add beat"))
    page.wait_for_markdown("the fox sleeps")
    page.click(_button("Generate 2 beats"))
    page.wait_for_caption("2 frames")
    # Regenerate twice and Fork twice: every new branch is the one shown, with a notice
    for new in ("story-2", "story-3"):
        page.click(_button("Regenerate"))
        page.wait_for_text(f"made the branch {new}, now shown")
        page.wait_for_text(f"Strip of {new}")
    for new in ("story-4", "story-5"):
        page.click(_button("Fork this story"))
        page.wait_for_text(f"as {new}, now shown")
        page.wait_for_text(f"Strip of {new}")
    frames = {}
    for name in ("story-1", "story-2", "story-3", "story-4", "story-5"):
        _choose(page, BRANCH_PICKER, name)
        frames[name] = _strip_sources(page)
        assert len(frames[name]) == 2
    assert frames["story-1"][1] != frames["story-2"][1] != frames["story-3"][1]
    # the story page download opens on its own with every image
    page.click(_button("Prepare downloads"))
    page.click("//*[@data-testid='stDownloadButton']//button[normalize-space(.)='Story page']")
    story = page.wait_for_download("story-5-story.html")
    address = browser.current_url  # with this tab's ?ws=
    assert "ws=" in address
    browser.get(story.as_uri())
    images = browser.execute_script(
        "return [...document.images].map(i => i.complete && i.naturalWidth > 0)"
    )
    assert images == [True, True]
    # a reload (the same address) restores every branch with the same frames
    browser.get(app_url)  # a new tab (no ?ws=) is offered the recent work
    page.wait_for_text("Autosaved from a recent visit")
    browser.get(address)  # a reload of the first tab
    page.wait_for_text("Autosaved from this address")
    page.click(_button("Restore"))
    page.wait_for_text("Restored 5 branches")
    for name, sources in frames.items():
        _choose(page, BRANCH_PICKER, name)
        assert _strip_sources(page) == sources, name
    assert not page.has_exception()
    # the same address in a second tab while the first is open: its own workspace
    first = browser.current_window_handle
    browser.switch_to.new_window("tab")
    browser.get(address)
    page.wait_for_text("This address is open in another tab")
    assert _ws(browser.current_url) not in ("", _ws(address))
    browser.close()
    browser.switch_to.window(first)


def _ws(url: str) -> str:
    return parse_qs(urlparse(url).query).get("ws", [""])[0]


@pytest.fixture
def slow_story(tmp_path):
    """A saved story slow enough to cancel (3 frames of 120 steps at 128 px: several
    seconds to replay, where the page shows a job's bar after one)."""
    from workbench.app.model import load_model

    session = Session(load_model("").pipe)  # the app's tiny default, made if needed
    params = GenerationParams(num_timesteps=120, height=128, width=128)
    chains.story(session, ["one", "two", "three"], params)
    return store.save(session, tmp_path / "sessions" / "slow")


def test_cancel_stops_a_replay(slow_story, app_url, browser):
    page = _AppPage(browser)
    browser.get(app_url)
    page.click("//*[@data-testid='stSidebar']//label[normalize-space(.)='Sessions']")
    page.click(_button("Replay"))
    page.wait_for_text("replaying slow: regenerating and comparing: turn")
    page.click(_button("Cancel"))
    page.wait_for_text("Cancelled replaying slow")
    assert not (slow_story / "replay_report.json").exists()
    assert not page.has_exception()


class _AppPage(_Page):
    """_Page with the text, upload and text-area helpers the app flows need."""

    def wait_for_text(self, text: str) -> None:
        from selenium.webdriver.common.by import By

        xpath = f"//*[contains(normalize-space(.), {_literal(text)})]"
        self.wait.until(lambda d: d.find_elements(By.XPATH, xpath), f"no text {text!r}")

    def has_markdown(self, text: str) -> bool:
        from selenium.webdriver.common.by import By

        xpath = (
            "//*[@data-testid='stMarkdownContainer']"
            f"[contains(normalize-space(.), {_literal(text)})]"
        )
        return bool(self.driver.find_elements(By.XPATH, xpath))

    def wait_for_markdown(self, text: str) -> None:
        self.wait.until(lambda d: self.has_markdown(text), f"no markdown {text!r}")

    def type_area(self, label: str, text: str) -> None:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys

        xpath = f"//textarea[@aria-label='{label}']"
        self.wait.until(lambda d: d.find_elements(By.XPATH, xpath), f"no text area {label!r}")
        field = self.driver.find_element(By.XPATH, xpath)
        field.send_keys(Keys.CONTROL, "a")
        field.send_keys(text)

    def value_of(self, xpath: str) -> str:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.XPATH, xpath).get_attribute("value")

    def upload(self, label: str, path: Path) -> None:
        from selenium.webdriver.common.by import By

        xpath = (
            f"//*[@data-testid='stFileUploader'][.//label[contains(., '{label}')]]"
            "//input[@type='file']"
        )
        self.wait.until(lambda d: d.find_elements(By.XPATH, xpath), f"no uploader {label!r}")
        self.driver.find_element(By.XPATH, xpath).send_keys(str(path))
        self.wait.until(
            lambda d: d.find_elements(By.XPATH, f"//*[contains(text(), '{path.name}')]"),
            f"{path.name} not uploaded",
        )

    def has_exception(self) -> bool:
        from selenium.webdriver.common.by import By

        return bool(self.driver.find_elements(By.XPATH, "//*[@data-testid='stException']"))


def _literal(text: str) -> str:
    return f"'{text}'" if "'" not in text else f'"{text}"'
