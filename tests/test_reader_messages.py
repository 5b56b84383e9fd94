"""Readers of hostile files: each refusal names the file and the problem in plain words,
and no reader ends in a Python error (RecursionError) instead of one of the workbench's."""

from __future__ import annotations

import json
import shutil

import pytest
from PIL import Image

from bagel.checkpoint import check_checkpoint, load
from bagel.errors import CheckpointError, ImageError
from workbench.cli.main import main
from workbench.session import Session
from workbench.store import save
from workbench.store.session_format import SessionFileError, read_manifest, read_transcript

DEEP = "[" * 10_000 + "]" * 10_000


def test_an_ema_file_that_is_a_folder_is_called_a_folder(tiny_dir, tmp_path):
    folder = shutil.copytree(tiny_dir, tmp_path / "ckpt")
    (folder / "ema.safetensors").unlink()
    (folder / "ema.safetensors").mkdir()
    with pytest.raises(CheckpointError, match="ema.safetensors is a folder, not a file"):
        load(folder, device="cpu", dtype="float32")
    assert any("is a folder" in problem for problem in check_checkpoint(folder))


def test_an_image_refused_for_its_shape_names_the_file_and_its_aspect_ratio(pipe, tmp_path):
    path = tmp_path / "panorama.png"
    Image.new("RGB", (4000, 20)).save(path)
    session = Session(pipe)
    with pytest.raises(ImageError, match=r"panorama\.png: .*aspect ratio 200\.0:1"):
        session.add_image(str(path))
    assert session.turns == []


def test_json_nested_ten_thousand_deep_anywhere_in_a_session_folder(pipe, tmp_path, capsys):
    session = Session(pipe)
    session.add_text("a fox")
    folder = save(session, tmp_path / "s")
    report = tmp_path / "report.json"  # where the replay is told to write its report
    report.write_text(DEEP)
    assert main(["replay", str(folder), "--report", str(report)]) == 2
    err = capsys.readouterr().err
    assert "is not an earlier replay report" in err and "Traceback" not in err
    (folder / "session.json").write_text(DEEP)
    for read in (lambda: read_manifest(folder, pipe, False), lambda: read_transcript(folder)):
        with pytest.raises(SessionFileError, match="session.json: not valid JSON .*nested"):
            read()


def test_an_export_reads_only_what_it_exports(pipe, tmp_path):
    session = Session(pipe)
    session.add_text("a fox")
    folder = save(session, tmp_path / "s")
    manifest = json.loads((folder / "session.json").read_text())
    manifest["turns"][0].update(seed=2**64, seconds="soon", threads=0)
    (folder / "session.json").write_text(json.dumps(manifest))
    with pytest.raises(SessionFileError, match="seed"):
        read_manifest(folder, pipe, False)
    assert read_transcript(folder)["turns"][0]["text"] == "a fox"
    manifest["turns"][0]["text"] = "\ud800"  # what it does export is still checked
    (folder / "session.json").write_text(json.dumps(manifest))
    with pytest.raises(SessionFileError, match="lone surrogate"):
        read_transcript(folder)
