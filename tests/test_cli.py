"""The `workbench` command: subcommands and exit codes."""

from __future__ import annotations

import json

from PIL import Image

from workbench.cli import main


def test_make_tiny_and_info(tmp_path, capsys):
    assert main(["make-tiny", str(tmp_path / "t")]) == 0
    capsys.readouterr()
    assert main(["info", str(tmp_path / "t")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["llm"]["num_hidden_layers"] == 2 and info["vit"]["num_hidden_layers"] == 2
    assert info["weights"]["ema.safetensors"]["tensors"] > 0 and len(info["identity"]) == 64


def test_demo_writes_its_outputs(tiny_dir, tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(
        [
            "demo",
            "--model",
            str(tiny_dir),
            "--out",
            str(out),
            "--steps",
            "3",
            "--size",
            "32",
            "--max-tokens",
            "4",
        ]
    )
    assert code == 0
    assert Image.open(out / "1_text_to_image.png").size == (32, 32)
    assert Image.open(out / "2_edit.png").size == (32, 32)
    assert (out / "3_answer.txt").read_text().endswith("\n")


def test_bad_input_exits_with_2(tmp_path, capsys):
    assert main(["info", str(tmp_path / "missing")]) == 2
    assert "no such checkpoint folder" in capsys.readouterr().err
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "llm_config.json").write_text("{}")
    assert main(["demo", "--model", str(tmp_path / "half"), "--out", str(tmp_path / "o")]) == 2
    assert "missing checkpoint file(s)" in capsys.readouterr().err
