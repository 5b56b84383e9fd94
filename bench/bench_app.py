"""The browser app against the command line's code doing the same work, in one run.

    .venv/bin/python bench/bench_app.py [--steps 8] [--size 128] [--moves 5] [--idle 20] \
        [--cli-threads N]
    .venv/bin/python bench/bench_app.py --world-model [--moves 5] [--reps 3]

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
- `--world-model` (alone): the World page on the shipped world model (models/world-64,
  as a user gets it), a start from the rendered view then `--moves` Forward clicks per
  rep, each click's time to its frame against the same move's frame time in this
  process: the difference is the page's overhead per move.

The app runs its model on all cores but one (its default: the browser needs one; or
$WORKBENCH_THREADS), the CLI code on all cores unless `--cli-threads` says otherwise. The reps interleave the
two (the order alternating) and the medians are compared; the app's idle CPU is sampled
last. Compare the ratios, not the seconds, across machines. Needs Debian's
chromium and chromium-driver (scripts/browser-deps.sh); the browser is driven by
bench/browser.py, as in tests/test_browser.py.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bagel.checkpoint import load  # noqa: E402
from bagel.tiny import make_tiny  # noqa: E402
from bench.browser import (  # noqa: E402
    CAPTION,
    NOTICE,
    AppServer,
    Page,
    app_env,
    chromium,
    exact_button,
    label,
    sidebar,
)
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
    parser.add_argument(
        "--world-model",
        action="store_true",
        help="only the World page on the shipped world model: each move's click to its "
        "frame, against the same move's frame time in this process",
    )
    parser.add_argument(
        "--busy",
        type=int,
        default=0,
        help="with --world-model: keep this many cores busy (a spinning process each)",
    )
    args = parser.parse_args()
    if args.cli_threads:
        torch.set_num_threads(args.cli_threads)
    if args.world_model:
        world_model_moves(args.moves, args.reps, args.busy)
        return
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


def world_model_moves(moves: int, reps: int, busy: int = 0) -> None:
    """Per Forward move on the shipped world model: the frame's time in this process
    (`chains.navigate`, as the app's job runs it) and the app's click to the frame shown
    and to the page complete; the difference is what the page adds to each move. Also
    the CPU seconds per move of the app's server and of the browser (every Chromium
    process), which is where that time goes; `busy` cores are kept busy meanwhile."""
    from workbench.app.world_truth import start_view
    from workbench.world.eval import world_params
    from workbench.world.model import default_world_model

    folder = default_world_model()
    if folder is None:
        raise SystemExit("the shipped world model (models/world-64) is not here")
    pipe = load(folder, dtype="float32")
    params = world_params(seed=0)
    frame_s: list[float] = []
    app_s: list[tuple[float, float]] = []
    spin = "while True: pass"
    spinners = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(busy)]
    server_cpu = browser_cpu = 0.0
    try:
        with tempfile.TemporaryDirectory(prefix="bench-app-") as tmp:
            tmp = Path(tmp)
            with _App(None, tmp / "sessions", tmp) as app:
                for _ in range(reps):
                    session = Session(pipe)
                    session.add_image(start_view(0), seed=0)
                    for _ in range(moves):
                        frame_s.append(
                            _seconds(lambda s=session: chains.navigate(s, ["forward"], params))
                        )
                    before = _tree_cpu(app.server.pid), _tree_cpu(app.browser_pid)
                    app_s += app.world_model_moves(moves)
                    server_cpu += _tree_cpu(app.server.pid) - before[0]
                    browser_cpu += _tree_cpu(app.browser_pid) - before[1]
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
    seen_s, done_s = [t[0] for t in app_s], [t[1] for t in app_s]
    frame, click, done = (statistics.median(v) for v in (frame_s, seen_s, done_s))
    print(
        f"world model {folder.name}, {params.num_timesteps} steps, 64x64; torch threads: "
        f"this process {torch.get_num_threads()}, app {app_options([], os.environ).threads}"
    )
    print(f"{reps} reps of {moves} Forward moves; medians per move (min-max in brackets)")
    print(f"frame in this process      {frame:.3f} s [{min(frame_s):.3f}-{max(frame_s):.3f}]")
    print(f"app: click to frame shown  {click:.3f} s [{min(seen_s):.3f}-{max(seen_s):.3f}]")
    print(f"app: click to page done    {done:.3f} s [{min(done_s):.3f}-{max(done_s):.3f}]")
    print(f"the page's overhead        {done - frame:.3f} s per move")
    n = reps * moves  # the CPU of the starts is counted too: an upper bound per move
    print(
        f"CPU per move: app server {server_cpu / n:.3f} s (the job's frame included), "
        f"browser {browser_cpu / n:.3f} s; {busy} core(s) kept busy"
    )


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
    """The app (bench/browser.py's AppServer) with a headless Chromium tab on it;
    `model` None: the defaults a user gets (the World page on the shipped world model)."""

    def __init__(self, model: Path | None, sessions: Path, tmp: Path):
        self.model, self.sessions, self.tmp = model, sessions, tmp
        self.worlds = 0

    def __enter__(self) -> _App:
        model = str(self.model) if self.model is not None else None
        self.server = AppServer(app_env(self.sessions, model), self.tmp / "streamlit.log")
        self.url = self.server.__enter__()
        self.driver = chromium()
        self.browser_pid = self.driver.service.process.pid  # chromedriver: Chromium's parent
        self.page = Page(self.driver, WAIT_SECONDS)
        self.driver.get(self.url)
        # the first run loads the model: wait for it, so that no rep overlaps the load
        self.page.wait.until(
            lambda d: self.page.find("//input[@aria-label='Denoising steps']"),
            "the app's first page",
        )
        return self

    def __exit__(self, *exc) -> None:
        self.driver.quit()
        self.server.__exit__()

    def replay(self, name: str) -> float:
        self.page.click(sidebar("Sessions"))
        self._choose_saved("Replay", name)
        return self.page.act(exact_button("Replay"), NOTICE, f"Replay of {name}:")

    def open(self, name: str) -> float:
        self.page.click(sidebar("Sessions"))
        self.page.click(label("the saved sessions"))
        self.page.click(
            "//*[@data-testid='stRadio'][.//*[contains(text(), 'Open on the page')]]"
            "//label[normalize-space(.)='Story']"
        )
        self._choose_saved("Open", name)
        return self.page.act(exact_button("Open"), NOTICE, f"Opened {name} as")

    def _choose_saved(self, section: str, name: str) -> None:
        """Pick `name` in the saved-session picker of the Sessions page's `section`."""
        picker = (
            "(//*[@data-testid='stVerticalBlock']"
            f"[.//h3[normalize-space(.)='{section}']])[last()]//*[@data-testid='stSelectbox']"
        )
        self.page.click(f"{picker}//input")
        self.page.click(f"//*[@role='option'][normalize-space(.)='{name}']")
        time.sleep(1)  # the rerun the choice triggers (a wrong pick: no result names it)

    def _new_world(self) -> None:
        self.page.click(sidebar("World"))
        time.sleep(1)
        if self.page.find(exact_button("New world")):
            self.page.click(exact_button("New world"))
            time.sleep(1)

    def world(self, steps: int, size: int, moves: int, path: bool = False) -> float:
        self._new_world()
        if self.worlds == 0:
            self.page.type_into("Denoising steps", str(steps))
            self.page.click(label("Automatic size"))
            self.page.type_into("Height", str(size))
            self.page.type_into("Width", str(size))
        self.worlds += 1
        self.page.type_into("Prompt", "a quiet street at dawn")
        seconds = self.page.act(exact_button("Start from prompt"), CAPTION, "1 frame")
        if path:
            self.page.type_into(
                "Path (moves in order, separated by commas)", f"forward x{moves}", enter=False
            )
            return seconds + self.page.act(
                exact_button("Walk the path"), CAPTION, f"{moves + 1} frames"
            )
        for n in range(2, moves + 2):
            seconds += self.page.act(exact_button("Forward"), CAPTION, f"{n} frames")
        return seconds

    def world_model_moves(self, moves: int) -> list[tuple[float, float]]:
        """The World page on the world model: a start from the rendered view, then each
        Forward click's seconds to its frame shown, and to the page complete again."""
        self._new_world()
        self.page.act(exact_button("Start from this view"), CAPTION, "1 frame")
        times = []
        for n in range(2, moves + 2):
            seen = self.page.act(exact_button("Forward"), CAPTION, f"{n} frames")
            times.append((seen, self.page.settled))
        return times

    def idle_cpu(self, seconds: float) -> float:
        time.sleep(3)  # the last rerun settles
        before, started = _cpu_seconds(self.server.pid), time.perf_counter()
        time.sleep(seconds)
        return (_cpu_seconds(self.server.pid) - before) / (time.perf_counter() - started)


def _tree_cpu(pid: int) -> float:
    """CPU seconds of a process and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            total += _cpu_seconds(current)
        except (OSError, IndexError):
            continue
        todo += children.get(current, [])
    return total


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    main()
