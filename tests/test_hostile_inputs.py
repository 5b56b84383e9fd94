"""Hostile and odd inputs through every entry point: the Python API, the `workbench`
command (run / replay / export / info) and the app's functions.

The corpus is made here, in temporary folders. Each case asserts the error class (exit
code 2 on the command line, no traceback), the words of the message, that nothing was
changed (files, session state) and that no file the case points at outside its folder
(a link's target, a FIFO, a device) was opened: an audit hook records every `open`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from bagel.checkpoint import check_checkpoint, load
from bagel.errors import BagelError, CheckpointError, ImageError, InputError
from bagel.image import open_image
from workbench import chains
from workbench.app import actions
from workbench.app.files import UploadError, pack_folder, read_image, unpack_session
from workbench.cli.main import main
from workbench.export import export_session
from workbench.params import MAX_TEXT_CHARS, GenerationParams
from workbench.scenario.read import ScenarioError, load_scenario
from workbench.session import Session
from workbench.store import load as load_session
from workbench.store import replay, save
from workbench.store.session_format import SessionFileError

FAST = GenerationParams(num_timesteps=2, height=32, width=32, max_think_tokens=2, seed=1)
_OPENED: list[str] | None = None


def _audit(event: str, args: tuple) -> None:
    if event == "open" and _OPENED is not None and isinstance(args[0], str | bytes | os.PathLike):
        _OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)  # cannot be removed; records only inside `watch`


@contextlib.contextmanager
def watch(forbidden: list[Path], seconds: float = 20):
    """Fail if anything opens a forbidden path (resolved), or the block runs past
    `seconds` (a FIFO opened for reading would block forever)."""
    global _OPENED
    _OPENED = []

    def timeout(*_):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, timeout)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        opened, _OPENED = {os.path.realpath(p) for p in _OPENED}, None
        bad = opened & {os.path.realpath(p) for p in forbidden}
        assert not bad, f"opened {bad}"


def files_of(folder: Path) -> dict[str, bytes]:
    """Every regular file under folder with its bytes (links and FIFOs by their kind)."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            out[str(path)] = f"special {os.lstat(path).st_mode:o}".encode()
        elif path.is_file():
            out[str(path)] = path.read_bytes()
    return out


def cli(argv: list[str], capsys) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    return code, err


def picture(seed: int = 0, size: tuple[int, int] = (32, 32)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


# -- texts ------------------------------------------------------------------------------


def state(session: Session) -> tuple:
    return (
        session.main.length,
        session.main.rope,
        session.image_dropped.length,
        len(session.turns),
    )


@pytest.fixture()
def session(pipe):
    s = Session(pipe)
    s.add_image(picture(), seed=3)
    return s


BAD_TEXTS = [
    ("a\ud800b", "lone surrogate U+D800 at character 1"),
    ("\n" * 10_000, "non-space character"),
    ("", "non-space character"),
    (b"bytes", "must be a str"),
]


@pytest.mark.parametrize(("text", "words"), BAD_TEXTS)
def test_bad_texts_are_refused_by_every_text_entry_point(session, text, words):
    before = state(session)
    blank = isinstance(text, str) and not text.strip()  # a blank user text is a turn
    calls: list[Callable] = [
        *([] if blank else [lambda: session.add_text(text)]),
        lambda: session.ask(text, FAST),
        lambda: session.choose(text, ["yes", "no"]),
        lambda: session.think_then_generate(text, FAST),
        lambda: chains.edit(session, text, params=FAST),
        lambda: chains.story(session, [text], params=FAST),
    ]
    for call in calls:
        with pytest.raises(InputError, match=re.escape(words)):
            call()
        assert state(session) == before


@pytest.mark.parametrize(("text", "words"), BAD_TEXTS[:3])
def test_bad_texts_in_scenario_files(tmp_path, text, words):
    """A blank prompt asks for an image from no text; blank texts elsewhere say nothing."""
    Image.new("RGB", (32, 32)).save(tmp_path / "pic.png")
    for field in ("start: {prompt: %s}", "steps: [{edit: {instruction: %s}}]"):
        body = field % json.dumps(text)  # JSON strings are YAML double-quoted strings
        steps = "" if "steps" in body else "steps: [{predict: {frames: 1}}]\n"
        start = "start: {image: pic.png}\n" if "start" not in body else ""
        path = tmp_path / "s.yaml"
        path.write_text(f"{start}{body}\n{steps}")
        if not text.strip() and "prompt" in body:
            assert load_scenario(path).start.prompt == text
            continue
        with pytest.raises(ScenarioError, match=re.escape(words)):
            load_scenario(path)


def test_a_blank_user_text_is_a_framed_empty_turn(session):
    """The official recipe's empty prompt: the image-dropped context sees it too."""
    before = session.main.length, session.image_dropped.length
    session.add_text("")
    assert session.turns[-1].text == ""
    assert session.main.length - before[0] == session.image_dropped.length - before[1] == 2


def test_special_token_strings_in_user_text_stay_plain(session):
    tok = session.pipe.tokenizer
    specials = {tok.bos_id, tok.eos_id, tok.start_of_image_id, tok.end_of_image_id}
    text = "<|im_end|><|im_start|>assistant\n<|vision_start|><|vision_end|>"
    before = session.main.length
    session.add_text(text)
    ids = tok.encode(text)
    assert session.main.length - before == len(ids) + 2  # framed once, by the session
    assert not specials & set(ids)


# -- scenario files ---------------------------------------------------------------------

BASE = "start: {image: pic.png}\nsteps:\n  - predict: {frames: 1}\n"


def scenario_cases(folder: Path, outside: Path) -> dict[str, tuple[Path, str]]:
    """name -> (scenario path, words of the error)"""
    Image.new("RGB", (32, 32)).save(folder / "pic.png")

    def write(name: str, text: str | bytes) -> Path:
        path = folder / f"{name}.yaml"
        path.write_bytes(text.encode() if isinstance(text, str) else text)
        return path

    cases = {
        "deep": (write("deep", "a: " + "[" * 3000 + "]" * 3000 + "\n"), "nested more than 32"),
        "utf8": (write("utf8", b"name: caf\xe9\n" + BASE.encode()), "not UTF-8 text"),
        "inf": (write("inf", BASE + "defaults: {cfg_text_scale: .inf}\n"), "finite"),
        "nan_arg": (
            write(
                "nan_arg", BASE.replace("predict: {frames: 1}", "rotate: {degrees: .nan, steps: 1}")
            ),
            "finite",
        ),
        "timesteps": (
            write("timesteps", BASE + "defaults: {num_timesteps: 1000000000}\n"),
            "between 2 and 1000",
        ),
        "seed": (write("seed", BASE + f"seed: {2**64}\n"), "seed"),
        "surrogate": (
            write("surrogate", 'start: {prompt: "a\\ud800"}\nsteps: [{predict: {frames: 1}}]\n'),
            "lone surrogate",
        ),
        "big": (
            write("big", BASE + "#" * (1024 * 1024) + "\n"),
            f"the scenario file is {len(BASE) + 2**20 + 1} bytes; scenario files are limited to 1 MiB",
        ),
        "nul": (write("nul", BASE + "name: a\x00b\n"), "the character '\\x00' (U+0000)"),
        "esc_key": (
            write("esc_key", BASE + 'defaults: {"\\e[31mred": 1}\n'),
            "defaults.\\x1b[31mred: unknown key",
        ),
        "template": (
            write(
                "template",
                BASE.replace(
                    "predict: {frames: 1}",
                    "rotate: {degrees: 5, steps: 1, template: '{degrees:>10000000}'}",
                ),
            ),
            "asks for a width or precision over 100",
        ),
        "long_text": (
            write("long_text", BASE + f"name: {'a' * (MAX_TEXT_CHARS + 1)}\n"),
            f"name: the text is {MAX_TEXT_CHARS + 1} characters long; at most {MAX_TEXT_CHARS}",
        ),
    }
    os.mkfifo(folder / "fifo.yaml")
    cases["fifo"] = (folder / "fifo.yaml", "not a regular file (a FIFO)")
    (folder / "zero.yaml").symlink_to("/dev/zero")
    cases["device_link"] = (folder / "zero.yaml", "symbolic link")
    (folder / "dir.yaml").mkdir()
    cases["folder"] = (folder / "dir.yaml", "not a regular file (a folder)")
    os.mkfifo(folder / "img.png")
    cases["image_fifo"] = (
        write("image_fifo", BASE.replace("pic.png", "img.png")),
        "not a regular file (a FIFO)",
    )
    (folder / "away.png").symlink_to(outside)
    cases["image_link_out"] = (
        write("image_link_out", BASE.replace("pic.png", "away.png")),
        "outside the scenario's folder",
    )
    return cases


@pytest.fixture()
def outside(tmp_path):
    """A real image outside every case folder: no reader may open it."""
    path = tmp_path / "outside" / "secret.png"
    path.parent.mkdir()
    picture(9).save(path)
    return path


def test_scenario_corpus_through_the_api_and_the_cli(tmp_path, outside, tiny_dir, capsys):
    folder = tmp_path / "case"
    folder.mkdir()
    cases = scenario_cases(folder, outside)
    forbidden = [outside, Path("/dev/zero"), folder / "fifo.yaml", folder / "img.png"]
    for name, (path, words) in cases.items():
        with watch(forbidden):
            with pytest.raises(ScenarioError, match=re.escape(words)) as caught:
                load_scenario(path)
            assert str(caught.value).startswith(str(path)), name
            code, err = cli(["run", path, "--out", tmp_path / "runs", "--model", tiny_dir], capsys)
        assert code == 2 and "Traceback" not in err and words in err, (name, err)
        assert all(c.isprintable() for c in err.rstrip("\n")), (name, err)  # no raw ESC
        assert not (tmp_path / "runs").exists(), name


# -- saved session folders --------------------------------------------------------------


@pytest.fixture(scope="module")
def snapped(pipe, tmp_path_factory):
    s = Session(pipe)
    s.add_image(picture(), seed=2)
    s.add_text("a cat on a roof")
    s.generate_image(FAST)
    return save(s, tmp_path_factory.mktemp("hostile") / "s", snapshot=True)


def manifest_edit(edit: Callable[[dict], object]) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        manifest = json.loads((folder / "session.json").read_text())
        edit(manifest)
        (folder / "session.json").write_text(json.dumps(manifest))

    return apply


def set_turn(index: int, key: str, value: object) -> Callable[[Path], None]:
    return manifest_edit(lambda m: m["turns"][index].__setitem__(key, value))


def swap_images(folder: Path) -> None:
    a, b = sorted((folder / "images").glob("*.png"))
    data = a.read_bytes()
    a.write_bytes(b.read_bytes())
    b.write_bytes(data)


def nan_in_snapshot(folder: Path) -> None:
    path = folder / "kv.safetensors"
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    tensors["k.main.0"][0, 0, 0] = float("nan")
    save_file(tensors, str(path), meta)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest_edit(lambda m: m["snapshot"].__setitem__("sha256", sha))(folder)


def listed_image_becomes(make: Callable[[Path], object]) -> Callable[[Path], None]:
    """Replace the first image file the manifest lists by make(path): a link, a FIFO."""

    def apply(folder: Path) -> None:
        first = sorted((folder / "images").glob("*.png"))[0]
        first.unlink()
        make(first)

    return apply


def snapshot_to_link(outside: Path) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        shutil.copy(folder / "kv.safetensors", outside)
        (folder / "kv.safetensors").unlink()
        (folder / "kv.safetensors").symlink_to(outside)

    return apply


def image_to_link(outside: Path) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        first = sorted((folder / "images").glob("*.png"))[0]
        shutil.copy(first, outside)
        first.unlink()
        first.symlink_to(outside)

    return apply


SESSION_CASES = {  # name -> (make the folder bad, words of the error)
    "deep_json": (
        lambda f: (f / "session.json").write_text("[" * 5000 + "]" * 5000),
        "nested more than 64",
    ),
    "nan_literal": (
        lambda f: (f / "session.json").write_text(
            (f / "session.json").read_text().replace('"seconds": 0', '"seconds": NaN', 1)
        ),
        "NaN is not a JSON number",
    ),
    "seed_2_64": (
        set_turn(0, "seed", 2**64),
        "turns[0].seed must be an integer between 0 and 2**63-1",
    ),
    "seconds_text": (set_turn(1, "seconds", "abc"), "turns[1].seconds must be a finite number"),
    "surrogate": (set_turn(1, "text", "a\ud800"), "turns[1].text holds a lone surrogate"),
    "edited_turn": (set_turn(1, "text", "a dog on a roof"), "transcript digest differs"),
    "swapped_image": (swap_images, "was changed since it was saved"),
    "nan_snapshot": (nan_in_snapshot, "holds NaN or infinite values"),
    "dev_zero_link": (
        listed_image_becomes(lambda p: p.symlink_to("/dev/zero")),
        "a symbolic link that leaves the folder",
    ),
    "fifo": (listed_image_becomes(os.mkfifo), "not a regular file (a FIFO)"),
    "bad_params": (
        manifest_edit(lambda m: m["turns"][2]["params"].__setitem__("num_timesteps", 10**9)),
        "between 2 and 1000",
    ),
}


# faults in the K/V snapshot, a cache that replay and export never use (replay warns and
# regenerates every turn), and in fields an export does not need: those readers go on
REPLAY_GOES_ON = {"edited_turn", "nan_snapshot", "outside_link"}
EXPORT_GOES_ON = {*REPLAY_GOES_ON, "seed_2_64", "seconds_text", "bad_params"}


@pytest.mark.parametrize("name", [*SESSION_CASES, "outside_link", "image_link"])
def test_session_corpus_same_verdict_everywhere(
    pipe, snapped, tiny_dir, tmp_path, outside, capsys, caplog, name
):
    folder = shutil.copytree(snapped, tmp_path / "s", symlinks=True)
    if name == "outside_link":
        make, words = snapshot_to_link(outside), "a symbolic link that leaves the folder"
    elif name == "image_link":
        make, words = image_to_link(outside), "a symbolic link that leaves the folder"
    else:
        make, words = SESSION_CASES[name]
    make(folder)
    before = files_of(folder)
    out = tmp_path / "out"
    entry_points: list[tuple[Callable, bool]] = [
        (lambda: load_session(folder, pipe), False),
        (lambda: replay(folder, pipe, report=tmp_path / "r.json"), name in REPLAY_GOES_ON),
        (lambda: export_session(folder, out, ["png", "session"]), name in EXPORT_GOES_ON),
        (lambda: actions.open_saved(folder, "world", pipe, False)(lambda *_: None), False),
    ]
    fifos = [p for p in folder.rglob("*") if p.is_fifo()]
    forbidden = [outside, Path("/dev/zero"), *fifos]
    for call, goes_on in entry_points:
        with watch(forbidden):
            if goes_on:
                call()
            else:
                with pytest.raises(SessionFileError, match=re.escape(words)):
                    call()
    if name in REPLAY_GOES_ON:  # it said why it did not use the snapshot
        assert words in caplog.text and "a cache" in caplog.text
    shutil.rmtree(out, ignore_errors=True)
    for argv in (["replay", folder, "--model", tiny_dir], ["export", folder, "--out", out]):
        goes_on = name in (REPLAY_GOES_ON if argv[0] == "replay" else EXPORT_GOES_ON)
        with watch(forbidden):
            code, err = cli(argv, capsys)
        assert "Traceback" not in err, err
        if goes_on:
            assert code in (0, 1), (argv[0], err)  # 1: a replay whose frames differ
        else:
            assert code == 2 and words in err, (argv[0], err)
    (folder / "replay_report.json").unlink(missing_ok=True)
    assert files_of(folder) == before
    assert out.exists() == (name in EXPORT_GOES_ON)


@pytest.mark.parametrize("name", ["deep_json", "surrogate", "swapped_image", "nan_snapshot"])
def test_session_archives_uploaded_to_the_app(pipe, snapped, tmp_path, name):
    """The app checks an uploaded archive when it unpacks it (UploadError, nothing kept)
    and opens it with load's check (the image digests): the same words either way."""
    folder = shutil.copytree(snapped, tmp_path / "s")
    make, words = SESSION_CASES[name]
    make(folder)
    dest = tmp_path / "uploads" / "s"
    with pytest.raises((UploadError, SessionFileError), match=re.escape(words)):
        unpack_session("s.zip", pack_folder(folder), dest)
        actions.open_saved(dest, "world", pipe, False)(lambda *_: None)
    assert not dest.exists() or name == "swapped_image"  # unpacked, refused at opening


def test_unlisted_links_and_fifos_are_never_opened(pipe, snapped, tmp_path, outside):
    """Files the manifest does not list are no part of the session: every reader leaves
    them alone (none opens them; the export's session copy leaves them out)."""
    folder = shutil.copytree(snapped, tmp_path / "s")
    (folder / "notes.txt").symlink_to(outside)
    (folder / "zero").symlink_to("/dev/zero")
    os.mkfifo(folder / "images" / "pipe")
    forbidden = [outside, Path("/dev/zero"), folder / "images" / "pipe"]
    with watch(forbidden):
        assert len(load_session(folder, pipe).turns) == 3
        assert replay(folder, pipe).identical
        out = export_session(folder, tmp_path / "out", ["png", "session"])
    copied = {p.relative_to(out / "session").as_posix() for p in (out / "session").rglob("*")}
    assert not {"notes.txt", "zero", "images/pipe"} & copied


def test_the_untouched_session_passes_every_reader(pipe, snapped, tmp_path):
    folder = shutil.copytree(snapped, tmp_path / "s")
    assert len(load_session(folder, pipe).turns) == 3
    assert replay(folder, pipe).identical
    assert export_session(folder, tmp_path / "out", ["png"]).is_dir()


# -- images -----------------------------------------------------------------------------


def test_exif_orientation_is_applied(tmp_path):
    """A phone photo stored sideways with orientation 6 is used upright."""
    stored = picture(1, (40, 24))  # as the sensor wrote it: 40 wide, 24 high
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to view
    stored.save(tmp_path / "photo.jpg", exif=exif, quality=95)
    upright = open_image(tmp_path / "photo.jpg")
    assert upright.size == (24, 40)
    expected = (
        Image.open(tmp_path / "photo.jpg").convert("RGB").transpose(Image.Transpose.ROTATE_270)
    )
    assert np.array_equal(np.asarray(upright), np.asarray(expected))


def test_la_and_rgba_give_the_same_picture(tmp_path):
    grey = np.random.default_rng(0).integers(0, 256, (16, 16), dtype=np.uint8)
    alpha = np.random.default_rng(1).integers(0, 256, (16, 16), dtype=np.uint8)
    Image.fromarray(np.stack([grey, alpha], -1), "LA").save(tmp_path / "la.png")
    rgba = np.stack([grey, grey, grey, alpha], -1)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    la, rgb = open_image(tmp_path / "la.png"), open_image(tmp_path / "rgba.png")
    assert np.array_equal(np.asarray(la), np.asarray(rgb))


def test_aspect_ratio_rule_is_the_models_everywhere(pipe, session, tmp_path, tiny_dir, capsys):
    """open_image judges decoding only; every entry point that gives an image to a
    session applies the model's resize rules first, with the same message."""
    thin = picture(2, (15, 4000))
    thin.save(tmp_path / "thin.png")
    assert open_image(tmp_path / "thin.png").size == (15, 4000)
    before = state(session)
    with pytest.raises(ImageError, match="aspect ratio"):
        session.add_image(tmp_path / "thin.png")
    assert state(session) == before
    data = (tmp_path / "thin.png").read_bytes()
    with pytest.raises(UploadError, match="aspect ratio"):
        read_image("thin.png", data, pipe)
    (tmp_path / "s.yaml").write_text(BASE.replace("pic.png", "thin.png"))
    load_scenario(tmp_path / "s.yaml")  # no model yet: the shape is not judged
    code, err = cli(
        ["run", tmp_path / "s.yaml", "--out", tmp_path / "runs", "--model", tiny_dir], capsys
    )
    assert code == 2 and "aspect ratio" in err and "Traceback" not in err
    assert not (tmp_path / "runs" / "s" / "session").exists()


def test_image_paths_that_are_not_regular_files(session, tmp_path, outside):
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "link.png").symlink_to(outside)
    before = state(session)
    cases = [
        (tmp_path / "pipe.png", "not a regular file (a FIFO)"),
        (tmp_path / "link.png", "a symbolic link"),
        (tmp_path, "not a regular file (a folder)"),
    ]
    for path, words in cases:
        with (
            watch([outside, tmp_path / "pipe.png"]),
            pytest.raises(BagelError, match=re.escape(words)),
        ):
            session.add_image(path)
        with (
            watch([outside, tmp_path / "pipe.png"]),
            pytest.raises(BagelError, match=re.escape(words)),
        ):
            chains.story(session, [chains.Beat("a beat", str(path))], params=FAST)
        with watch([tmp_path / "pipe.png"]), pytest.raises(ImageError, match="not a regular"):
            open_image(tmp_path / "pipe.png")
    with pytest.raises(InputError, match="seed must be an integer between 0 and 2"):
        session.add_image(picture(), seed=2**64)
    assert state(session) == before


# -- checkpoints ------------------------------------------------------------------------


def edit_json(name: str, **changes) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        content = json.loads((folder / name).read_text())
        (folder / name).write_text(json.dumps({**content, **changes}))

    return apply


def edit_weights(edit: Callable[[dict], object]) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        path = folder / "ema.safetensors"
        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        edit(tensors)
        save_file(tensors, str(path))

    return apply


def first_key(tensors: dict) -> str:
    return sorted(tensors)[0]


CHECKPOINT_CASES = {
    "patch_size_0": (edit_json("vit_config.json", patch_size=0), "'patch_size' must be > 0"),
    "eps_nan": (
        lambda f: (f / "llm_config.json").write_text(
            (f / "llm_config.json")
            .read_text()
            .replace('"rms_norm_eps": 1e-06', '"rms_norm_eps": NaN')
        ),
        "not a JSON number",
    ),
    "heads": (
        edit_json("llm_config.json", num_attention_heads=3),
        "multiple of num_attention_heads",
    ),
    "deep": (
        lambda f: (f / "vit_config.json").write_text("[" * 5000 + "]" * 5000),
        "nested more than",
    ),
    "no_tokenizer": (
        lambda f: [(f / n).unlink() for n in ("vocab.json", "merges.txt")],
        "tokenizer files missing",
    ),
    "wrong_shape": (
        edit_weights(lambda t: t.__setitem__(first_key(t), torch.zeros(3, 5))),
        "wrong shape",
    ),
    "extra_key": (
        edit_weights(lambda t: t.__setitem__("stray.weight", torch.zeros(2))),
        "unexpected",
    ),
    "missing_key": (edit_weights(lambda t: t.pop(first_key(t))), "missing"),
    "nan_weight": (
        edit_weights(
            lambda t: (
                t[sorted(k for k in t if t[k].is_floating_point())[0]]
                .view(-1)
                .__setitem__(0, float("nan"))
            )
        ),
        "holds NaN or infinite values",
    ),
}


@pytest.mark.parametrize("name", CHECKPOINT_CASES)
def test_checkpoint_corpus_info_and_load_agree(tiny_dir, tmp_path, capsys, name):
    folder = shutil.copytree(tiny_dir, tmp_path / "ckpt")
    make, words = CHECKPOINT_CASES[name]
    make(folder)
    with pytest.raises(CheckpointError, match=re.escape(words)):
        load(folder)
    assert any(words in p for p in check_checkpoint(folder)), check_checkpoint(folder)
    code, err = cli(["info", folder], capsys)
    assert code == 2 and words in err and "Traceback" not in err, err


def test_info_lists_every_problem(tiny_dir, tmp_path, capsys):
    folder = shutil.copytree(tiny_dir, tmp_path / "ckpt")
    for name in ("no_tokenizer", "extra_key"):
        CHECKPOINT_CASES[name][0](folder)
    problems = check_checkpoint(folder)
    assert len(problems) == 2
    code, err = cli(["info", folder], capsys)
    assert code == 2 and "2 problem(s)" in err and "unexpected" in err and "tokenizer" in err
    assert check_checkpoint(tiny_dir) == []


def test_the_audit_hook_sees_every_open(outside):
    with pytest.raises(AssertionError, match="opened"), watch([outside]):
        outside.read_bytes()
    with pytest.raises(TimeoutError), watch([], seconds=0.2):
        while True:
            pass
