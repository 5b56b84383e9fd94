"""Plant known faults one at a time and check that the tests meant to catch each fail.

    OMP_NUM_THREADS=1 .venv/bin/python tests/tools/mutation_check.py [NAME...]

The source tree is copied to a temporary folder (without .git, .venv, models, caches and
outputs); each fault is a text substitution in one file of that copy, restored before the
next. The checkout itself is never written, so an interrupted run leaves it as it was.
First the selected tests run once on the unchanged copy (they must pass, or a "caught"
would mean nothing); then each fault runs its narrow selection. Prints a table
fault -> caught / MISSED and exits 1 if any fault was missed or could not be planted
(its text is no longer in the file: update the list). The last result is in
docs/testing.md.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SKIP = shutil.ignore_patterns(
    ".git", ".venv", "models", "*-training", ".cache", "out", "runs", "artifacts",
    "__pycache__", ".pytest_cache", ".ruff_cache", "*.egg-info", "demo-output",
)  # fmt: skip


@dataclass(frozen=True)
class Fault:
    name: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]  # pytest arguments: files and -k selections


FAULTS = [
    Fault(
        "replay: a frame counts as different only past 1 level",
        "workbench/store/replay_report.py",
        "if f.max_abs_diff]",
        "if f.max_abs_diff > 1]",
        ("tests/test_replay_verdicts.py", "-k", "off_by_one or verdict"),
    ),
    Fault(
        "replay: replies and thoughts not compared",
        "workbench/store/persist.py",
        'texts.append((index, reply == entry["text"]))',
        "texts.append((index, True))",
        ("tests/test_replay_verdicts.py", "-k", "reply_or_thought or verdict"),
    ),
    Fault(
        "replay: a frame of another size counts as identical",
        "workbench/store/persist.py",
        "return FrameDiff(index, 255, 0.0)",
        'return FrameDiff(index, 0, float("inf"))',
        ("tests/test_replay_verdicts.py", "-k", "another_size or verdict"),
    ),
    Fault(
        "image pixel limit: > turned into >=",
        "bagel/image.py",
        "if width * height > MAX_INPUT_PIXELS:",
        "if width * height >= MAX_INPUT_PIXELS:",
        ("tests/test_limits.py", "-k", "pixel_limit"),
    ),
    Fault(
        "session: the text-dropped guidance context is the whole main context",
        "workbench/session.py",
        "cfg_text_ctx=self.main.prefix(self.text_mark.length, self.text_mark.rope),",
        "cfg_text_ctx=self.main,",
        ("tests/test_guidance_contexts.py",),
    ),
    Fault(
        "serve: the loopback check weakened to is_private",
        "workbench/server/run.py",
        "return ipaddress.ip_address(host).is_loopback",
        "return ipaddress.ip_address(host).is_private",
        ("tests/test_serve.py", "-k", "open_address"),
    ),
    Fault(
        "aspect ratio limit: > turned into >=",
        "bagel/image.py",
        "if long_side * self.stride > self.max_side * short_side:",
        "if long_side * self.stride >= self.max_side * short_side:",
        ("tests/test_limits.py", "-k", "aspect_ratio"),
    ),
    Fault(
        "model position limit: > turned into >=",
        "bagel/inputs.py",
        "if ctx.rope + advance > limit:",
        "if ctx.rope + advance >= limit:",
        ("tests/test_limits.py", "-k", "position_limit_of_the_model"),
    ),
    Fault(
        "session position budget: > turned into >=",
        "workbench/session.py",
        "if rope + positions > limit:",
        "if rope + positions >= limit:",
        ("tests/test_limits.py", "-k", "position_limit_of_a_session"),
    ),
    Fault(
        "session token budget: > turned into >=",
        "workbench/session.py",
        "if budget is not None and length_after() > budget:",
        "if budget is not None and length_after() >= budget:",
        ("tests/test_limits.py", "-k", "token_budget"),
    ),
    Fault(
        "archive entry count: > turned into >=",
        "workbench/app/files.py",
        "if len(infos) > MAX_ARCHIVE_FILES:",
        "if len(infos) >= MAX_ARCHIVE_FILES:",
        ("tests/test_limits.py", "-k", "archive_entry"),
    ),
    Fault(
        "archive unpacked bytes: > turned into >=",
        "workbench/app/files.py",
        "if sum(i.file_size for i in files) > MAX_UNPACKED_BYTES:",
        "if sum(i.file_size for i in files) >= MAX_UNPACKED_BYTES:",
        ("tests/test_limits.py", "-k", "unpacked_size"),
    ),
    Fault(
        "archive upload size: > turned into >=",
        "workbench/app/files.py",
        "if len(data) > MAX_ARCHIVE_MB * MB:",
        "if len(data) >= MAX_ARCHIVE_MB * MB:",
        ("tests/test_limits.py", "-k", "archive_upload"),
    ),
    Fault(
        "uploaded image size: > turned into >=",
        "workbench/app/files.py",
        "if len(data) > MAX_IMAGE_MB * MB:",
        "if len(data) >= MAX_IMAGE_MB * MB:",
        ("tests/test_limits.py", "-k", "uploaded_image"),
    ),
]


def run_tests(tree: Path, args: tuple[str, ...], seconds: int = 600) -> tuple[int, float]:
    """pytest's exit status (0 passed, 1 a test failed, other: could not run; -1: still
    running after `seconds`) and the seconds it took."""
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *args]
    started = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=tree, env=env, capture_output=True, timeout=seconds)
    except subprocess.TimeoutExpired:
        return -1, time.perf_counter() - started
    return done.returncode, time.perf_counter() - started


def baseline(faults: list[Fault]) -> list[tuple[str, ...]]:
    """One pytest run per test file, selecting every test any fault runs there."""
    selections: dict[str, list[str] | None] = {}
    for fault in faults:
        file, keyword = fault.tests[0], fault.tests[2] if len(fault.tests) > 2 else None
        if keyword is None or selections.get(file, []) is None:
            selections[file] = None  # the whole file
        else:
            selections.setdefault(file, []).append(f"({keyword})")
    return [(f,) if k is None else (f, "-k", " or ".join(k)) for f, k in selections.items()]


def plant(tree: Path, fault: Fault) -> str | None:
    """Apply the fault in the copy; returns the original text, None if it is not there."""
    path = tree / fault.file
    text = path.read_text()
    if fault.old not in text:
        return None
    path.write_text(text.replace(fault.old, fault.new))
    return text


def main(names: list[str]) -> int:
    faults = [f for f in FAULTS if not names or any(n in f.name for n in names)]
    with tempfile.TemporaryDirectory(prefix="mutation-check-") as tmp:
        tree = Path(tmp) / "tree"
        shutil.copytree(ROOT, tree, ignore=SKIP, symlinks=True)
        for args in baseline(faults):
            status, seconds = run_tests(tree, args)
            print(
                f"unchanged tree: {' '.join(args)}: status {status} in {seconds:.0f} s", flush=True
            )
            if status != 0:
                print("the selected tests do not pass without a fault: fix that first")
                return 1
        rows = []
        for fault in faults:
            original = plant(tree, fault)
            if original is None:
                rows.append((fault, "NOT PLANTED", 0.0))
                continue
            try:
                status, seconds = run_tests(tree, fault.tests)
            finally:
                (tree / fault.file).write_text(original)
            result = {0: "MISSED", 1: "caught", -1: "HUNG"}.get(status, f"ERROR {status}")
            rows.append((fault, result, seconds))
            print(f"{fault.name}: {result} in {seconds:.0f} s", flush=True)
    width = max(len(f.name) for f, _, _ in rows)
    print(f"\n{'fault':<{width}}  {'result':<11}  seconds  tests")
    for fault, result, seconds in rows:
        print(f"{fault.name:<{width}}  {result:<11}  {seconds:>7.0f}  {' '.join(fault.tests)}")
    missed = [f for f, result, _ in rows if result != "caught"]
    print(f"\n{len(rows) - len(missed)} of {len(rows)} faults caught")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
