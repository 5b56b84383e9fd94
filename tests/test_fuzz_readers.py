"""Fuzzing the scenario and session readers (Hypothesis, a bounded number of examples,
derandomized so CI sees the same ones): whatever the file holds, the reader returns or
raises its documented error, and never hangs."""

from __future__ import annotations

import contextlib
import copy
import json
import shutil
import signal
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from bagel.errors import BagelError
from workbench.params import GenerationParams
from workbench.scenario.read import ScenarioError, load_scenario
from workbench.scenario.schema import CHAIN_ARGS, TOP_KEYS
from workbench.session import Session
from workbench.store import load as load_session
from workbench.store import save
from workbench.store.session_format import SessionFileError, read_manifest

FUZZ = settings(
    max_examples=40,
    deadline=None,  # the machine is shared: a hang is caught by `within` instead
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@contextlib.contextmanager
def within(seconds: float):
    """Fail an example that runs past `seconds` (a hang)."""

    def timeout(*_):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, timeout)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# scalars a hand-edited file can hold, odd ones included
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["\ud800", "\n" * 50, "<|im_start|>", "pic.png", "../x.png", "/dev/zero"]),
)
KEYS = st.sampled_from(
    [*TOP_KEYS, *CHAIN_ARGS, *(k for args in CHAIN_ARGS.values() for k in args), "image", "prompt"]
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=30,
)


@pytest.fixture(scope="module")
def scenario_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    Image.new("RGB", (32, 32)).save(folder / "pic.png")
    return folder


@FUZZ
@given(document=st.dictionaries(KEYS, values, max_size=6))
def test_scenario_reader_structured(scenario_folder, document):
    path = scenario_folder / "s.yaml"
    path.write_text(json.dumps(document))  # JSON is YAML: odd floats and escapes included
    try:
        with within(10):
            load_scenario(path)
    except ScenarioError:
        pass


@FUZZ
@given(text=st.text(alphabet=st.sampled_from("ab:-[]{}&*!|>'\"#\n \t.0123\\u"), max_size=200))
def test_scenario_reader_raw_text(scenario_folder, text):
    path = scenario_folder / "raw.yaml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    try:
        with within(10):
            load_scenario(path)
    except ScenarioError:
        pass


# pieces of YAML a scenario is made of, odd tags and scalars included
PIECES = st.sampled_from(
    [
        *("steps:", "- ", "story:", "beats:", "navigate:", "actions:", "forward", "params:"),
        *(
            "seed:",
            "defaults:",
            "start:",
            "prompt:",
            "image:",
            "pic.png",
            "[a]",
            "{",
            "}",
            "[",
            "]",
        ),
        *("!!int ", "!!float ", "!!timestamp ", "!!binary ", "!!str ", "!!python/none ", "? "),
        *("2001-13-45", "0x", "0o", "1_0", "9" * 30, ".inf", ":", "\n", "  ", "&a ", "*a "),
        *("'", '"', "\\e", "\\0", "#", "null", "~", "true", "-", ".", "e+", "x"),
    ]
)


@settings(FUZZ, max_examples=300)  # fast (no image is opened); 40 missed an empty !!int
@given(parts=st.lists(PIECES, max_size=40))
def test_scenario_reader_yaml_pieces(scenario_folder, parts):
    path = scenario_folder / "pieces.yaml"
    path.write_text("".join(parts))
    try:
        with within(10):
            load_scenario(path)
    except ScenarioError as err:
        assert all(c.isprintable() for c in str(err)), str(err)  # control characters escaped


@pytest.fixture(scope="module")
def saved_manifest(pipe, tmp_path_factory):
    s = Session(pipe)
    rng = np.random.default_rng(0)
    s.add_image(Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)), seed=1)
    s.add_text("a cat")
    s.generate_image(GenerationParams(num_timesteps=2, height=32, width=32, seed=2))
    folder = save(s, tmp_path_factory.mktemp("fuzz") / "s")
    return folder, json.loads((folder / "session.json").read_text())


def _paths(value, prefix=()):
    """Every (path, value) inside a JSON document."""
    yield prefix, value
    items = (
        value.items()
        if isinstance(value, dict)
        else enumerate(value)
        if isinstance(value, list)
        else ()
    )
    for key, child in items:
        yield from _paths(child, (*prefix, key))


@settings(FUZZ, max_examples=15)
@given(data=st.data())
def test_session_reader_mutated_manifest(pipe, saved_manifest, data):
    """One to three fields of a real manifest replaced by odd values: read_manifest
    returns or raises SessionFileError; load raises nothing but a BagelError."""
    source, manifest = saved_manifest
    manifest = copy.deepcopy(manifest)
    for _ in range(data.draw(st.integers(1, 3))):
        paths = [p for p, _ in _paths(manifest) if p]
        where = data.draw(st.sampled_from(paths))
        parent = manifest
        for key in where[:-1]:
            parent = parent[key]
        parent[where[-1]] = data.draw(values)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(shutil.copytree(source, Path(tmp) / "s"))
        (folder / "session.json").write_text(json.dumps(manifest))
        try:
            with within(30):
                read_manifest(folder, pipe, allow_other_checkpoint=False)
        except SessionFileError:
            return
        try:
            with within(30):
                load_session(folder, pipe)
        except BagelError:
            pass
