"""Driving the app in a real browser, for the browser test and the app benchmark alike:
`streamlit run streamlit_app.py` on a free 127.0.0.1 port, headless Chromium through
selenium, and a page object whose every action waits for Streamlit's reruns.

    with AppServer(env, log) as url:
        page = Page(chromium())
        page.driver.get(url)
        page.click(button("Start from this view"))
        page.wait_for_caption("1 frame")

Needs Debian's chromium and chromium-driver (scripts/browser-deps.sh installs them).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STARTUP_SECONDS = 120
# one generation on a loaded CI machine, the first one loading the model ($BROWSER_STEP_SECONDS)
STEP_SECONDS = float(os.environ.get("BROWSER_STEP_SECONDS", 300))


class BrowserMissing(RuntimeError):
    """chromium or chromedriver is not installed."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AppServer:
    """`streamlit run streamlit_app.py` on a free loopback port, with `env`, its output in
    `log`; the context gives its address and stops it at the end."""

    def __init__(self, env: Mapping[str, str], log: Path):
        self.env, self.log = dict(env), log

    def __enter__(self) -> str:
        port = free_port()
        command = [sys.executable, "-m", "streamlit", "run", "streamlit_app.py"]
        command += ["--server.port", str(port), "--server.address", "127.0.0.1"]
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )
        self.url = f"http://127.0.0.1:{port}"
        try:
            self._wait_healthy()
        except BaseException:
            self.__exit__()
            raise
        return self.url

    @property
    def pid(self) -> int:
        return self.process.pid

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"streamlit exited with {self.process.returncode}:\n{self.log.read_text()}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2) as reply:
                    if reply.read().strip() == b"ok":
                        return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(
            f"streamlit did not answer on {self.url} within {STARTUP_SECONDS} s:\n"
            f"{self.log.read_text()}"
        )

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def chromium(downloads: Path | None = None, size: str = "1400,1200"):
    """A headless Chromium (selenium's driver); files it downloads go to `downloads`."""
    binary, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (binary and driver_path):
        raise BrowserMissing(
            "the browser needs Debian's chromium and chromium-driver: run "
            "`bash scripts/browser-deps.sh` (as root) or scripts/test.sh, which does"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    options.add_argument(f"--window-size={size}")
    if downloads is not None:
        options.add_experimental_option(
            "prefs",
            {"download.default_directory": str(downloads), "download.prompt_for_download": False},
        )
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    if downloads is not None:
        driver.execute_cdp_cmd(
            "Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
        )
    driver.downloads = downloads
    return driver


# -- where things are (XPath) ---------------------------------------------------------


def literal(text: str) -> str:
    return f"'{text}'" if "'" not in text else f'"{text}"'


def button(text: str) -> str:
    """A button whose text contains `text`."""
    return f"//button[contains(normalize-space(.), {literal(text)})]"


def exact_button(text: str) -> str:
    """A button whose text is `text`."""
    return (
        f"//button[normalize-space(.)={literal(text)} or .//p[normalize-space(.)={literal(text)}]]"
    )


def sidebar(text: str) -> str:
    """A sidebar choice (the page radio's labels)."""
    return f"//*[@data-testid='stSidebar']//label[normalize-space(.)={literal(text)}]"


def label(text: str) -> str:
    return f"//label[normalize-space(.)={literal(text)}]"


NOTICE = "[data-testid='stAlert']"  # CSS selectors, for `Page.act`
CAPTION = "[data-testid='stCaptionContainer']"


class Page:
    """A browser tab on the app: every action waits until its target is ready."""

    def __init__(self, driver, seconds: float = STEP_SECONDS, poll: float = 0.1):
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver = driver
        self.wait = WebDriverWait(driver, seconds, poll_frequency=poll)

    def find(self, xpath: str) -> list:
        from selenium.webdriver.common.by import By

        return self.driver.find_elements(By.XPATH, xpath)

    def click(self, xpath: str) -> None:
        from selenium.common.exceptions import WebDriverException

        def clicked(driver) -> bool:
            for element in self.find(xpath):
                try:
                    if element.is_displayed() and element.is_enabled():
                        element.click()
                        return True
                except WebDriverException:  # stale, or covered while the page redraws
                    return False
            return False

        self.wait.until(clicked, f"no enabled element {xpath}")

    def type_into(self, label_text: str, text: str, enter: bool = True) -> None:
        """Type into the input labelled `label_text`; with `enter`, send it and wait for
        the rerun (a form's field: its button sends it)."""
        from selenium.webdriver.common.keys import Keys

        xpath = f"//input[@aria-label={literal(label_text)}]"
        self.wait.until(lambda d: self.find(xpath), f"no input {label_text!r}")
        field = self.find(xpath)[0]
        field.send_keys(Keys.CONTROL, "a")
        if not enter:
            field.send_keys(text)
            return
        field.send_keys(text, Keys.ENTER)
        self.wait.until(
            lambda d: self.find(xpath)[0].get_attribute("value") == text,
            f"{label_text!r} did not take {text!r}",
        )
        time.sleep(1)  # the rerun the value triggers

    def type_area(self, label_text: str, text: str) -> None:
        from selenium.webdriver.common.keys import Keys

        xpath = f"//textarea[@aria-label={literal(label_text)}]"
        self.wait.until(lambda d: self.find(xpath), f"no text area {label_text!r}")
        field = self.find(xpath)[0]
        field.send_keys(Keys.CONTROL, "a")
        field.send_keys(text)

    def value_of(self, xpath: str) -> str:
        return self.find(xpath)[0].get_attribute("value")

    def has_text(self, text: str) -> bool:
        return bool(self.find(f"//*[contains(normalize-space(.), {literal(text)})]"))

    def wait_for_text(self, text: str) -> None:
        self.wait.until(lambda d: self.has_text(text), f"no text {text!r}")

    def has_markdown(self, text: str) -> bool:
        return bool(
            self.find(
                "//*[@data-testid='stMarkdownContainer']"
                f"[contains(normalize-space(.), {literal(text)})]"
            )
        )

    def wait_for_markdown(self, text: str) -> None:
        self.wait.until(lambda d: self.has_markdown(text), f"no markdown {text!r}")

    def wait_for_caption(self, text: str) -> None:
        xpath = f"//*[@data-testid='stCaptionContainer'][normalize-space(.)={literal(text)}]"
        self.wait.until(lambda d: self.find(xpath), f"no caption {text!r}")

    def wait_for_download(self, name: str) -> Path:
        path = self.driver.downloads / name
        self.wait.until(lambda d: path.is_file() and path.stat().st_size > 0, f"no {name}")
        return path

    def upload(self, label_text: str, path: Path) -> None:
        xpath = (
            f"//*[@data-testid='stFileUploader'][.//label[contains(., {literal(label_text)})]]"
            "//input[@type='file']"
        )
        self.wait.until(lambda d: self.find(xpath), f"no uploader {label_text!r}")
        self.find(xpath)[0].send_keys(str(path))
        self.wait.until(
            lambda d: self.find(f"//*[contains(text(), {literal(path.name)})]"),
            f"{path.name} not uploaded",
        )

    def has_exception(self) -> bool:
        return bool(self.find("//*[@data-testid='stException']"))

    def act(self, xpath: str, where: str, text: str) -> float:
        """Click `xpath`; the seconds from the browser's click event to `text` in an
        element matching the CSS selector `where` (both stamped in the page, so the
        driver's own latency and polling are not counted). `self.settled`: the seconds
        from the click to the end of the script run that showed it (the page complete,
        every button usable again)."""
        self.driver.execute_script(_STAMPS, where, text)
        self.click(xpath)
        self.wait.until(
            lambda d: d.execute_script("return window.__bench.settled !== null"),
            f"no {text!r} in {where}",
        )
        clicked, seen, settled = self.driver.execute_script(
            "const b = window.__bench; return [b.click, b.seen, b.settled]"
        )
        self.settled = (settled - clicked) / 1000
        return (seen - clicked) / 1000


# The page's own clock: the first click from now, the first time an element matching the
# selector holds the text (exactly, after collapsing white space, or "…:" / "… as" texts
# as a prefix), and the first time after that the app's script is no longer running.
_STAMPS = """
const [where, text] = arguments;
const stamps = window.__bench = {click: null, seen: null, settled: null};
document.addEventListener("click", () => { stamps.click ??= performance.now(); },
                          {capture: true, once: true});
const holds = (el) => {
  const t = el.textContent.replace(/\\s+/g, " ").trim();
  return t === text || t.startsWith(text);
};
const idle = () => {
  const app = document.querySelector("[data-test-script-state]");
  return app !== null && app.getAttribute("data-test-script-state") === "notRunning";
};
const look = () => {
  if (stamps.seen === null && [...document.querySelectorAll(where)].some(holds)) {
    stamps.seen = performance.now();
  }
  if (stamps.seen !== null && stamps.settled === null && idle()) {
    stamps.settled = performance.now();
    observer.disconnect();
  }
};
const observer = new MutationObserver(look);
observer.observe(document.body, {childList: true, subtree: true, characterData: true,
                                 attributes: true, attributeFilter: ["data-test-script-state"]});
"""


def app_env(sessions: Path, model: str | None = None, **extra: str) -> dict[str, str]:
    """The app's environment: its sessions folder, and `model` (None: the defaults a
    user gets, the tiny default and the shipped world model)."""
    env = {**os.environ, "WORKBENCH_SESSIONS": str(sessions), **extra}
    env.pop("WORKBENCH_MODEL", None)
    if model is not None:
        env["WORKBENCH_MODEL"] = model
    return env
