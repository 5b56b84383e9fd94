"""The browser app against the command line's code doing the same work, in one run.

    .venv/bin/python bench/bench_app.py [--steps 8] [--size 128] [--moves 5] [--idle 20]

What is measured, on a tiny random checkpoint (float32, CPU):

- replay: a saved 3-beat story (made here first) is replayed by `workbench.store.replay`
  in this process (what `workbench replay` runs, model load excluded) and by the app:
  `streamlit run streamlit_app.py` on a free 127.0.0.1 port, driven by headless
  Chromium (Sessions page, Replay), timed from the click to the report on the page.
- world: a first frame from a prompt, then `--moves` Forward moves, by `Session` +
  `workbench.chains.navigate` in this process (what `workbench run` does per move, plus
  the consistency metrics the app shows) and by the app (World page: Start from prompt,
  then one Forward click per move), timed from the first click to the last frame shown.
- idle: the app server's CPU time (user + system, from /proc) over `--idle` seconds
  with the tab open and nothing running, as a share of one core.

The app runs first, then the in-process baseline, then the app's idle CPU; the machine
may be shared, so compare the ratios, not the seconds, across machines. Needs Debian's
chromium and chromium-driver (scripts/browser-deps.sh).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bagel.checkpoint import load  # noqa: E402
from bagel.tiny import make_tiny  # noqa: E402
from workbench import chains, store  # noqa: E402
from workbench.metrics import frame_metrics  # noqa: E402
from workbench.params import GenerationParams  # noqa: E402
from workbench.session import Session  # noqa: E402

BEATS = ["a fox finds a lantern", "the fox walks into the forest", "the lantern lights a cave"]
WAIT_SECONDS = 1800


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=8, help="denoising steps")
    parser.add_argument("--size", type=int, default=128, help="image side")
    parser.add_argument("--moves", type=int, default=5)
    parser.add_argument("--idle", type=float, default=20.0, help="seconds of idle sampling")
    args = parser.parse_args()
    params = GenerationParams(
        num_timesteps=args.steps, height=args.size, width=args.size, max_think_tokens=8
    )
    with tempfile.TemporaryDirectory(prefix="bench-app-") as tmp:
        tmp = Path(tmp)
        model = tmp / "tiny"
        make_tiny(model)
        pipe = load(model, dtype="float32")
        sessions = tmp / "sessions"
        story = Session(pipe)
        chains.story(story, [chains.Beat(t) for t in BEATS], params)
        store.save(story, sessions / "story")
        print(
            f"tiny checkpoint, {args.steps} steps, {args.size}x{args.size}, torch threads "
            f"{__import__('torch').get_num_threads()}"
        )

        with _App(model, sessions, tmp) as app:
            app_replay = app.replay()
            app_world = app.world(args.steps, args.size, args.moves)
            idle = app.idle_cpu(args.idle)

        started = time.perf_counter()
        report = store.replay(sessions / "story", pipe)
        cli_replay = time.perf_counter() - started
        assert report.identical, "the in-process replay differs from the saved story"
        cli_world = _world_in_process(pipe, params, args.moves)

    print(f"{'work':<28}{'CLI code (s)':>14}{'app (s)':>10}{'app / CLI':>11}")
    for name, cli, app_s in (
        ("replay, 3-frame story", cli_replay, app_replay),
        (f"world: start + {args.moves} moves", cli_world, app_world),
    ):
        print(f"{name:<28}{cli:>14.1f}{app_s:>10.1f}{app_s / cli:>11.2f}")
    print(f"idle server, one tab open: {100 * idle:.1f}% of one core over {args.idle:g} s")


def _world_in_process(pipe, params: GenerationParams, moves: int) -> float:
    started = time.perf_counter()
    session = Session(pipe)
    session.add_text("a quiet street at dawn")
    session.generate_image(params)
    images = [session.turns[-1].image]
    for _ in range(moves):
        result = chains.navigate(session, ["forward"], params)
        images += [f.image for f in result.frames]
        frame_metrics(pipe, images)  # the app shows them after every move
    return time.perf_counter() - started


class _App:
    """`streamlit run` on a free loopback port with a headless Chromium tab."""

    def __init__(self, model: Path, sessions: Path, tmp: Path):
        self.model, self.sessions, self.tmp = model, sessions, tmp

    def __enter__(self) -> _App:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        from selenium.webdriver.support.ui import WebDriverWait

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {
            **os.environ,
            "WORKBENCH_MODEL": str(self.model),
            "WORKBENCH_SESSIONS": str(self.sessions),
        }
        command = [sys.executable, "-m", "streamlit", "run", "streamlit_app.py"]
        command += ["--server.port", str(port), "--server.address", "127.0.0.1"]
        self.log = open(self.tmp / "streamlit.log", "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=self.log, stderr=self.log
        )
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2) as r:
                    if r.read().strip() == b"ok":
                        break
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError((self.tmp / "streamlit.log").read_text()) from None
                time.sleep(0.5)
        options = webdriver.ChromeOptions()
        options.binary_location = shutil.which("chromium")
        for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
            options.add_argument(flag)
        options.add_argument("--window-size=1400,1200")
        self.driver = webdriver.Chrome(
            service=Service(shutil.which("chromedriver")), options=options
        )
        self.wait = WebDriverWait(self.driver, WAIT_SECONDS, poll_frequency=0.1)
        self.driver.get(self.url)
        return self

    def __exit__(self, *exc) -> None:
        self.driver.quit()
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()

    def replay(self) -> float:
        self._click(_label("Sessions"))
        self._click(_button("Replay"))
        started = time.perf_counter()
        self._wait_text("Replay of story:")
        return time.perf_counter() - started

    def world(self, steps: int, size: int, moves: int) -> float:
        self._click(_label("World"))
        self._type("Denoising steps", str(steps))
        self._click(_label("Automatic size"))
        self._type("Height", str(size))
        self._type("Width", str(size))
        self._type("Prompt", "a quiet street at dawn")
        self._click(_button("Start from prompt"))
        started = time.perf_counter()
        self._wait_caption("1 frame")
        for n in range(2, moves + 2):
            self._click(_button("Forward"))
            self._wait_caption(f"{n} frames")
        return time.perf_counter() - started

    def idle_cpu(self, seconds: float) -> float:
        time.sleep(3)  # the last rerun settles
        before, started = _cpu_seconds(self.process.pid), time.perf_counter()
        time.sleep(seconds)
        return (_cpu_seconds(self.process.pid) - before) / (time.perf_counter() - started)

    def _click(self, xpath: str) -> None:
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.common.by import By

        def clicked(driver) -> bool:
            for element in driver.find_elements(By.XPATH, xpath):
                try:
                    if element.is_displayed() and element.is_enabled():
                        element.click()
                        return True
                except WebDriverException:
                    return False
            return False

        self.wait.until(clicked, f"no enabled element {xpath}")

    def _type(self, label: str, text: str) -> None:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys

        xpath = f"//input[@aria-label='{label}']"
        self.wait.until(lambda d: d.find_elements(By.XPATH, xpath), f"no input {label!r}")
        field = self.driver.find_element(By.XPATH, xpath)
        field.send_keys(Keys.CONTROL, "a")
        field.send_keys(text, Keys.ENTER)
        time.sleep(1)  # the rerun the value triggers

    def _wait_text(self, text: str) -> None:
        from selenium.webdriver.common.by import By

        xpath = f"//*[contains(normalize-space(.), '{text}')]"
        self.wait.until(lambda d: d.find_elements(By.XPATH, xpath), f"no text {text!r}")

    def _wait_caption(self, text: str) -> None:
        from selenium.webdriver.common.by import By

        xpath = f"//*[@data-testid='stCaptionContainer'][normalize-space(.)='{text}']"
        self.wait.until(lambda d: d.find_elements(By.XPATH, xpath), f"no caption {text!r}")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _button(text: str) -> str:
    return f"//button[normalize-space(.)='{text}' or .//p[normalize-space(.)='{text}']]"


def _label(text: str) -> str:
    return f"//label[normalize-space(.)='{text}']"


if __name__ == "__main__":
    main()
