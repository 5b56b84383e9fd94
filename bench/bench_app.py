"""The browser app against the command line's code doing the same work, in one run.

    .venv/bin/python bench/bench_app.py [--steps 8] [--size 128] [--moves 5] [--idle 20] \
        [--cli-threads N]

What is measured, on a tiny random checkpoint (float32, CPU):

- replay: a saved 3-beat story (made here first, one copy per rep) is replayed by `workbench.store.replay`
  in this process (what `workbench replay` runs, model load excluded) and by the app:
  `streamlit run streamlit_app.py` on a free 127.0.0.1 port, driven by headless
  Chromium (Sessions page, Replay), timed from the click to the report on the page.
  App times are stamped by the page itself: from the browser's click event to the
  moment the result is in the page (so the driver's latency and polling are not
  counted; a user's own pauses between clicks are not either).
- open: the same saved story opened by `workbench.store.load` in this process and by
  the app (Sessions page, Open from the saved sessions, on the Story page), timed from
  the click to the notice that it is open.
- world: a first frame from a prompt, then `--moves` Forward moves, by `Session` +
  `workbench.chains.navigate` in this process (then the consistency metrics once, as an
  export computes them) and by the app (World page: Start from prompt, then one Forward
  click per move; the app also computes each new frame's metrics and autosaves the
  branch after every move), the sum of each click's time to its new frame.
- path: the same world, its moves typed as one path ("forward x5", Walk the path):
  one click for all the moves, against the same in-process code.
- CLI command: the same replay and world as the user runs them, `workbench replay` and
  `workbench run` on a scenario file (prompt, then the moves; no export) in a fresh
  process, start-up and model load included (how the app's slowness was first measured:
  `workbench replay` against the app's Replay). Opening has no command of its own.
- idle: the app server's CPU time (user + system, from /proc) over `--idle` seconds
  with the tab open and nothing running, as a share of one core.

The app runs its model on all cores but one (its default: the browser needs one; or
$WORKBENCH_THREADS), the CLI code on all cores unless `--cli-threads` says otherwise. The reps interleave the
two (the order alternating) and the medians are compared; the app's idle CPU is sampled
last. Compare the ratios, not the seconds, across machines. Needs Debian's
chromium and chromium-driver (scripts/browser-deps.sh).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bagel.checkpoint import load  # noqa: E402
from bagel.tiny import make_tiny  # noqa: E402
from workbench import chains, store  # noqa: E402
from workbench.app.model import app_options  # noqa: E402
from workbench.metrics import frame_metrics  # noqa: E402
from workbench.params import GenerationParams  # noqa: E402
from workbench.session import Session  # noqa: E402

BEATS = ["a fox finds a lantern", "the fox walks into the forest", "the lantern lights a cave"]
WAIT_SECONDS = 300  # one action; a failed wait names what it waited for


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=8, help="denoising steps")
    parser.add_argument("--size", type=int, default=128, help="image side")
    parser.add_argument("--moves", type=int, default=5)
    parser.add_argument("--idle", type=float, default=20.0, help="seconds of idle sampling")
    parser.add_argument(
        "--only", default="replay,open,world,path", help="which work, comma-separated"
    )
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument(
        "--cli-threads", type=int, default=0, help="torch threads of the CLI code (0: all cores)"
    )
    args = parser.parse_args()
    if args.cli_threads:
        torch.set_num_threads(args.cli_threads)
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
        for rep in range(args.reps):  # one copy per rep: its name marks the rep's result
            store.save(story, sessions / _copy(rep))
        print(
            f"tiny checkpoint, {args.steps} steps, {args.size}x{args.size}; torch threads: "
            f"CLI code {torch.get_num_threads()}, app {app_options([], os.environ).threads}"
        )

        works = [w for w in ("replay", "open", "world", "path") if w in args.only.split(",")]
        cli_work = {
            "replay": lambda: _replay_in_process(sessions / _copy(0), pipe),
            "open": lambda: store.load(sessions / _copy(0), pipe),
            "world": lambda: _world_in_process(pipe, params, args.moves),
            "path": lambda: _world_in_process(pipe, params, args.moves),
        }
        scenario = _world_scenario(tmp, args.steps, args.size, args.moves)
        command_work = {
            "replay": lambda rep: _command(
                "replay",
                str(sessions / _copy(rep)),
                "--model",
                str(model),
                "--report",
                str(tmp / f"report-{rep}.json"),
            ),
            "world": lambda rep: _command(
                "run", str(scenario), "--model", str(model), "--out", str(tmp / f"run-{rep}")
            ),
        }
        command_work["path"] = command_work["world"]
        command_s: dict[str, list[float]] = {w: [] for w in works if w in command_work}
        cli_s: dict[str, list[float]] = {w: [] for w in works}
        app_s: dict[str, list[float]] = {w: [] for w in works}
        with _App(model, sessions, tmp) as app:
            for rep in range(args.reps):  # interleaved, the order alternating
                app_work = {
                    "replay": lambda rep=rep: app.replay(_copy(rep)),
                    "open": lambda rep=rep: app.open(_copy(rep)),
                    "world": lambda: app.world(args.steps, args.size, args.moves),
                    "path": lambda: app.world(args.steps, args.size, args.moves, path=True),
                }
                for w in works:
                    if w in command_s:
                        command_s[w].append(command_work[w](rep))
                    if rep % 2 == 0:
                        cli_s[w].append(_seconds(cli_work[w]))
                        app_s[w].append(app_work[w]())
                    else:
                        app_s[w].append(app_work[w]())
                        cli_s[w].append(_seconds(cli_work[w]))
            idle = app.idle_cpu(args.idle)

    names = {
        "replay": "replay, 3-frame story",
        "open": "open, 3-frame story",
        "world": f"world: start + {args.moves} moves",
        "path": f"world: start + path of {args.moves}",
    }
    print(f"{args.reps} interleaved reps; medians (each rep's seconds in brackets)")
    print(
        f"{'work':<28}{'CLI code (s)':>24}{'app (s)':>24}{'app / CLI code':>16}"
        f"{'CLI command (s)':>24}{'app / command':>15}"
    )
    for w in works:
        cli, app_m = statistics.median(cli_s[w]), statistics.median(app_s[w])
        line = f"{names[w]:<28}{_cell(cli, cli_s[w]):>24}{_cell(app_m, app_s[w]):>24}"
        line += f"{app_m / cli:>16.2f}"
        if w in command_s:
            command = statistics.median(command_s[w])
            line += f"{_cell(command, command_s[w]):>24}{app_m / command:>15.2f}"
        print(line)
    print(f"idle server, one tab open: {100 * idle:.1f}% of one core over {args.idle:g} s")


def _copy(rep: int) -> str:
    return f"story-{rep + 1}"


def _cell(median: float, values: list[float]) -> str:
    return f"{median:.1f} [{', '.join(f'{v:.1f}' for v in values)}]"


def _seconds(work) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def _command(*args: str) -> float:
    """Seconds of one `workbench` command in a fresh process (it must succeed)."""
    command = [str(Path(sys.executable).parent / "workbench"), *args]
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def _world_scenario(tmp: Path, steps: int, size: int, moves: int) -> Path:
    """The world's work as a scenario file: a frame from the prompt, then the moves."""
    path = tmp / "world.yaml"
    path.write_text(
        "name: bench world\n"
        f"defaults: {{num_timesteps: {steps}, height: {size}, width: {size}}}\n"
        "start: {prompt: a quiet street at dawn}\n"
        f"steps:\n  - navigate: {{actions: [{', '.join(['forward'] * moves)}]}}\n"
        "export: {formats: []}\n"
    )
    return path


def _replay_in_process(folder: Path, pipe) -> None:
    report = store.replay(folder, pipe)
    assert report.identical, "the in-process replay differs from the saved story"


def _world_in_process(pipe, params: GenerationParams, moves: int) -> None:
    session = Session(pipe)
    session.add_text("a quiet street at dawn")
    session.generate_image(params)
    images = [session.turns[-1].image]
    for _ in range(moves):
        result = chains.navigate(session, ["forward"], params)
        images += [f.image for f in result.frames]
    frame_metrics(pipe, images)


class _App:
    """`streamlit run` on a free loopback port with a headless Chromium tab."""

    def __init__(self, model: Path, sessions: Path, tmp: Path):
        self.model, self.sessions, self.tmp = model, sessions, tmp
        self.worlds = 0

    def __enter__(self) -> _App:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        from selenium.webdriver.common.by import By
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
        # the first run loads the model: wait for it, so that no rep overlaps the load
        self.wait.until(
            lambda d: d.find_elements(By.XPATH, "//input[@aria-label='Denoising steps']"),
            "the app's first page",
        )
        return self

    def __exit__(self, *exc) -> None:
        self.driver.quit()
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()

    def replay(self, name: str) -> float:
        self._click(_sidebar("Sessions"))
        self._choose_saved("Replay", name)
        return self._act(_button("Replay"), NOTICE, f"Replay of {name}:")

    def open(self, name: str) -> float:
        self._click(_sidebar("Sessions"))
        self._click(_label("the saved sessions"))
        self._click(
            "//*[@data-testid='stRadio'][.//*[contains(text(), 'Open on the page')]]"
            "//label[normalize-space(.)='Story']"
        )
        self._choose_saved("Open", name)
        return self._act(_button("Open"), NOTICE, f"Opened {name} as")

    def _choose_saved(self, section: str, name: str) -> None:
        """Pick `name` in the saved-session picker of the Sessions page's `section`."""
        picker = (
            "(//*[@data-testid='stVerticalBlock']"
            f"[.//h3[normalize-space(.)='{section}']])[last()]//*[@data-testid='stSelectbox']"
        )
        self._click(f"{picker}//input")
        self._click(f"//*[@role='option'][normalize-space(.)='{name}']")
        time.sleep(1)  # the rerun the choice triggers (a wrong pick: no result names it)

    def world(self, steps: int, size: int, moves: int, path: bool = False) -> float:
        self._click(_sidebar("World"))
        time.sleep(1)
        from selenium.webdriver.common.by import By

        if self.driver.find_elements(By.XPATH, _button("New world")):
            self._click(_button("New world"))
            time.sleep(1)
        if self.worlds == 0:
            self._type("Denoising steps", str(steps))
            self._click(_label("Automatic size"))
            self._type("Height", str(size))
            self._type("Width", str(size))
        self.worlds += 1
        self._type("Prompt", "a quiet street at dawn")
        seconds = self._act(_button("Start from prompt"), CAPTION, "1 frame")
        if path:
            self._type(
                "Path (moves in order, separated by commas)", f"forward x{moves}", enter=False
            )
            return seconds + self._act(_button("Walk the path"), CAPTION, f"{moves + 1} frames")
        for n in range(2, moves + 2):
            seconds += self._act(_button("Forward"), CAPTION, f"{n} frames")
        return seconds

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

    def _type(self, label: str, text: str, enter: bool = True) -> None:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys

        xpath = f"//input[@aria-label='{label}']"
        self.wait.until(lambda d: d.find_elements(By.XPATH, xpath), f"no input {label!r}")
        field = self.driver.find_element(By.XPATH, xpath)
        field.send_keys(Keys.CONTROL, "a")
        if not enter:  # a form's field: its button sends it
            field.send_keys(text)
            return
        field.send_keys(text, Keys.ENTER)
        time.sleep(1)  # the rerun the value triggers

    def _act(self, button: str, where: str, text: str) -> float:
        """Click `button`; the seconds from the browser's click event to `text` in an
        element matching the CSS selector `where` (both stamped in the page, so the
        driver's own latency and polling are not counted)."""
        self.driver.execute_script(_STAMPS, where, text)
        self._click(button)
        self.wait.until(
            lambda d: d.execute_script("return window.__bench.seen !== null"),
            f"no {text!r} in {where}",
        )
        clicked, seen = self.driver.execute_script(
            "return [window.__bench.click, window.__bench.seen]"
        )
        return (seen - clicked) / 1000


# The page's own clock: the first click from now, and the first time an element matching
# the selector holds the text (exactly, after collapsing white space, or "…:" / "… as"
# texts as a prefix).
_STAMPS = """
const [where, text] = arguments;
const stamps = window.__bench = {click: null, seen: null};
document.addEventListener("click", () => { stamps.click ??= performance.now(); },
                          {capture: true, once: true});
const holds = (el) => {
  const t = el.textContent.replace(/\\s+/g, " ").trim();
  return t === text || t.startsWith(text);
};
const look = () => {
  if (stamps.seen === null && [...document.querySelectorAll(where)].some(holds)) {
    stamps.seen = performance.now();
    observer.disconnect();
  }
};
const observer = new MutationObserver(look);
observer.observe(document.body, {childList: true, subtree: true, characterData: true});
"""
NOTICE = "[data-testid='stAlert']"
CAPTION = "[data-testid='stCaptionContainer']"


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _button(text: str) -> str:
    return f"//button[normalize-space(.)='{text}' or .//p[normalize-space(.)='{text}']]"


def _sidebar(text: str) -> str:
    return f"//*[@data-testid='stSidebar']//label[normalize-space(.)='{text}']"


def _label(text: str) -> str:
    return f"//label[normalize-space(.)='{text}']"


if __name__ == "__main__":
    main()
