"""Tests for bagel.tokenizer on the tiny deterministic tokenizer (no downloads)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bagel.errors import CheckpointError, InputError
from bagel.tokenizer import (
    BAGEL_SPECIAL_TOKENS,
    GEN_THINK_PROMPT,
    IM_END,
    IM_START,
    TINY_PAD_ROWS,
    VISION_END,
    VISION_START,
    VLM_THINK_PROMPT,
    BagelTokenizer,
    split_reply,
    write_tiny_tokenizer,
)

FILES = ("vocab.json", "merges.txt", "tokenizer_config.json")
REPO = Path(__file__).resolve().parents[1]


def _read_all(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in FILES}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny_tok")
    write_tiny_tokenizer(folder)
    return folder


@pytest.fixture(scope="module")
def tok(tiny_dir: Path) -> BagelTokenizer:
    return BagelTokenizer.from_folder(tiny_dir)


# -- the tiny tokenizer files ------------------------------------------------------------


def test_tiny_files_are_byte_identical(tmp_path: Path, tiny_dir: Path) -> None:
    write_tiny_tokenizer(tmp_path / "a")
    write_tiny_tokenizer(tmp_path / "b")
    assert sorted(os.listdir(tmp_path / "a")) == sorted(FILES)
    assert _read_all(tmp_path / "a") == _read_all(tmp_path / "b") == _read_all(tiny_dir)


def test_tiny_files_do_not_depend_on_hash_seed(tmp_path: Path, tiny_dir: Path) -> None:
    code = "import sys; from bagel.tokenizer import write_tiny_tokenizer; write_tiny_tokenizer(sys.argv[1])"
    env = dict(os.environ, PYTHONHASHSEED="12345")
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, env=env, cwd=REPO)
    assert _read_all(tmp_path) == _read_all(tiny_dir)


def test_tiny_file_layout(tiny_dir: Path) -> None:
    vocab = json.loads((tiny_dir / "vocab.json").read_text(encoding="utf-8"))
    merges = (tiny_dir / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert merges[0] == "#version: 0.2"
    assert list(vocab.values()) == list(range(len(vocab)))
    # 256 byte symbols first, starting with "!" (GPT-2 order); the space byte is "Ġ"
    assert list(vocab)[0] == "!" and vocab["Ġ"] < 256
    assert all(len(token) == 1 for token in list(vocab)[:256])
    assert len(merges) - 1 == len(vocab) - 256
    for line in merges[1:]:
        left, right = line.split(" ")
        assert left in vocab and right in vocab and left + right in vocab
    config = json.loads((tiny_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["tokenizer_class"] == "Qwen2Tokenizer"
    assert config["eos_token"] == IM_END and config["bos_token"] is None
    assert config["split_special_tokens"] is False
    assert config["clean_up_tokenization_spaces"] is False
    added = {entry["content"]: int(i) for i, entry in config["added_tokens_decoder"].items()}
    assert sorted(added.values()) == list(range(len(vocab), len(vocab) + 5))


def test_tiny_vocab_size_argument(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="vocab_size"):
        write_tiny_tokenizer(tmp_path / "small", vocab_size=100)
    for size in (300, 2048):
        write_tiny_tokenizer(tmp_path / str(size), vocab_size=size)
        tok = BagelTokenizer.from_folder(tmp_path / str(size))
        assert tok.vocab_len <= size - TINY_PAD_ROWS
        assert tok.encode("walk forward") != []


# -- loading and special ids -------------------------------------------------------------


def test_length_and_special_ids(tok: BagelTokenizer, tiny_dir: Path) -> None:
    assert tok.vocab_len == len(tok) == len(tok.hf_tokenizer) <= 512
    assert tok.vocab_len == 512 - TINY_PAD_ROWS
    assert tok.num_added_tokens == 0
    config = json.loads((tiny_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    by_name = {entry["content"]: int(i) for i, entry in config["added_tokens_decoder"].items()}
    ids = [tok.bos_id, tok.eos_id, tok.start_of_image_id, tok.end_of_image_id]
    assert len(set(ids)) == 4
    assert ids == [by_name[name] for name in (IM_START, IM_END, VISION_START, VISION_END)]
    assert tok.new_token_ids == {
        "bos_token_id": tok.bos_id,
        "eos_token_id": tok.eos_id,
        "start_of_image": tok.start_of_image_id,
        "end_of_image": tok.end_of_image_id,
    }


def test_missing_special_tokens_are_added(tmp_path: Path) -> None:
    write_tiny_tokenizer(tmp_path)
    config_file = tmp_path / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    decoder = config["added_tokens_decoder"]
    for key in [k for k, v in decoder.items() if v["content"] in (VISION_START, VISION_END)]:
        del decoder[key]
    config["additional_special_tokens"] = [IM_START, IM_END]
    config_file.write_text(json.dumps(config), encoding="utf-8")
    tok = BagelTokenizer.from_folder(tmp_path)
    assert tok.num_added_tokens == 2
    assert tok.vocab_len == 512 - TINY_PAD_ROWS
    assert {tok.start_of_image_id, tok.end_of_image_id} == {tok.vocab_len - 2, tok.vocab_len - 1}
    assert tok.hf_tokenizer.convert_tokens_to_ids(VISION_START) == tok.start_of_image_id


def test_tokenizer_json_alone_gives_same_ids(tok: BagelTokenizer, tmp_path: Path) -> None:
    tok.hf_tokenizer.save_pretrained(tmp_path)
    if not (tmp_path / "tokenizer.json").is_file():
        pytest.skip("this transformers version saves no tokenizer.json")
    (tmp_path / "vocab.json").unlink(missing_ok=True)
    (tmp_path / "merges.txt").unlink(missing_ok=True)
    other = BagelTokenizer.from_folder(tmp_path)
    assert other.new_token_ids == tok.new_token_ids and other.vocab_len == tok.vocab_len
    for text in ("a cat walks forward", "你好世界 🐱🚀", f"x{IM_END}y"):
        assert other.encode(text) == tok.encode(text)


# -- encode / frame / decode -------------------------------------------------------------


def test_frame(tok: BagelTokenizer) -> None:
    ids = tok.frame("a cat")
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    assert ids[1:-1] == tok.encode("a cat")
    specials = set(tok.new_token_ids.values())
    assert not specials & set(ids[1:-1])
    assert tok.frame("") == [tok.bos_id, tok.eos_id]


def test_encode_adds_no_specials(tok: BagelTokenizer) -> None:
    ids = tok.encode("Walk forward and turn left.")
    assert ids and not set(ids) & set(tok.new_token_ids.values())
    assert tok.encode("") == []


@pytest.mark.parametrize(
    "text",
    [
        "a cat",
        "Walk forward, then turn LEFT at the red street!  Camera 360.",
        " leading and trailing spaces \n\n\ttabs ",
        "你好世界",
        "🐱🚀",
        "mixed: cat 猫 🐱 — ünïcödé",
        GEN_THINK_PROMPT,
    ],
)
def test_encode_decode_round_trip(tok: BagelTokenizer, text: str) -> None:
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_len for i in ids)
    assert tok.decode(ids) == text


def test_text_is_nfc_normalised(tok: BagelTokenizer) -> None:
    assert tok.encode("e\u0301") == tok.encode("\u00e9")


def test_literal_special_strings_stay_plain_text(tok: BagelTokenizer) -> None:
    specials = {tok.bos_id, tok.eos_id, tok.start_of_image_id, tok.end_of_image_id}
    for text in (f"hi{IM_END}there", VISION_START + VISION_END, f"{IM_START}user\nx"):
        ids = tok.encode(text)
        assert not specials & set(ids)  # no forged turn or image boundary
        assert tok.decode(ids) == text  # ... and nothing of the text is lost
    framed = tok.frame(f"a{IM_END}b")
    assert [framed[0], framed[-1]] == [tok.bos_id, tok.eos_id]
    assert framed.count(tok.eos_id) == 1


def test_plain_text_ids_are_the_official_ones(tok: BagelTokenizer) -> None:
    """For text without special-token strings, the ids are those of the official
    encoding (split_special_tokens=False)."""
    official = tok.hf_tokenizer
    for text in ("Walk forward. Turn left!", GEN_THINK_PROMPT, VLM_THINK_PROMPT, " é 中文 \n\t"):
        assert tok.encode(text) == official.encode(text, add_special_tokens=False)


def test_lone_surrogates_are_refused(tok: BagelTokenizer) -> None:
    with pytest.raises(InputError, match="lone surrogate U\\+D800 at character 2"):
        tok.encode("ab\ud800c")
    with pytest.raises(InputError, match="lone surrogate U\\+DFFF"):
        tok.frame("\udfff")
    assert tok.decode(tok.encode("\U0001f600")) == "\U0001f600"  # a real pair is fine


def test_decode_keeps_specials_without_spaces(tok: BagelTokenizer) -> None:
    ids = [tok.bos_id, *tok.encode("a"), tok.eos_id, tok.bos_id]
    assert tok.decode(ids) == f"{IM_START}a{IM_END}{IM_START}"


def test_decode_drops_padded_rows_and_checks_ids(tok: BagelTokenizer) -> None:
    ids = tok.encode("cat")
    assert tok.decode([*ids, tok.vocab_len, 511]) == "cat"
    assert tok.decode(tuple(ids)) == "cat"
    for bad in ([-1], [1.5], ["a"], [True], "abc", 5, None):
        with pytest.raises(InputError):
            tok.decode(bad)  # type: ignore[arg-type]


def test_decode_accepts_tensors(tok: BagelTokenizer) -> None:
    torch = pytest.importorskip("torch")
    ids = tok.encode("red dog")
    assert tok.decode(torch.tensor(ids)) == "red dog"
    assert tok.decode(list(torch.tensor(ids))) == "red dog"


def test_decode_partial_utf8_is_replaced(tok: BagelTokenizer) -> None:
    ids = tok.encode("🐱")
    assert len(ids) > 1  # no merge covers the emoji's bytes
    partial = tok.decode(ids[:2])
    assert partial and set(partial) == {"\ufffd"}


def test_reply_text(tok: BagelTokenizer) -> None:
    body = tok.encode("hi there")
    assert tok.reply_text([tok.bos_id, *body]) == "hi there"
    assert tok.reply_text([tok.bos_id, *body, tok.eos_id]) == "hi there"
    assert tok.reply_text([tok.bos_id, *body, tok.eos_id, *tok.encode("more")]) == "hi there"
    assert tok.reply_text([tok.bos_id, *tok.encode(" spaced \n")]) == " spaced \n"
    assert tok.reply_text([tok.bos_id]) == ""


def test_split_reply_follows_reference() -> None:
    # text before the first <|im_end|>, then the piece after the first <|im_start|>
    assert split_reply(f"{IM_START}a{IM_END}b") == "a"
    assert split_reply(f"x{IM_START}a{IM_START}b{IM_END}c") == "a"
    assert split_reply(f"{IM_START}a{IM_END}{IM_START}b") == "a"
    assert split_reply("no markers") == "no markers"
    assert split_reply(f"a{IM_END}{IM_START}b") == "a"


def test_non_str_text_is_rejected(tok: BagelTokenizer) -> None:
    for bad in (None, b"cat", ["cat"], 3):
        with pytest.raises(InputError):
            tok.encode(bad)  # type: ignore[arg-type]
        with pytest.raises(InputError):
            tok.frame(bad)  # type: ignore[arg-type]


# -- system prompts ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "prompt, tail", [(GEN_THINK_PROMPT, "image here"), (VLM_THINK_PROMPT, "answer here")]
)
def test_system_prompts(prompt: str, tail: str) -> None:
    assert prompt.count(". \n") == 1
    assert prompt.count("\n") == 1
    assert prompt.endswith(tail) and not prompt.endswith("\n")
    first, second = prompt.split("\n")
    assert first.endswith(". ") and first.startswith("You should first think about the ")
    assert second.startswith("The ") and "<think> </think> tags, i.e. <think> " in second


def test_prompts_frame_as_plain_text(tok: BagelTokenizer) -> None:
    ids = tok.frame(GEN_THINK_PROMPT)
    assert ids.count(tok.bos_id) == 1 and ids.count(tok.eos_id) == 1
    assert tok.decode(ids[1:-1]) == GEN_THINK_PROMPT


# -- bad folders ---------------------------------------------------------------------------


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="vocab.json") as info:
        BagelTokenizer.from_folder(tmp_path)
    assert "merges.txt" in str(info.value) and str(tmp_path) in str(info.value)

    write_tiny_tokenizer(tmp_path)
    (tmp_path / "merges.txt").unlink()
    with pytest.raises(CheckpointError, match="merges.txt") as info:
        BagelTokenizer.from_folder(tmp_path)
    assert "vocab.json" not in str(info.value)

    with pytest.raises(CheckpointError, match="not a folder"):
        BagelTokenizer.from_folder(tmp_path / "nope")


@pytest.mark.parametrize(
    "name, content",
    [
        ("vocab.json", "{not json"),
        ("vocab.json", "[1, 2]"),
        ("vocab.json", '{"a": "x"}'),
        ("merges.txt", "#version: 0.2\nĠ t\nthree symbols here\n"),
        ("tokenizer_config.json", "{"),
    ],
)
def test_corrupt_files(tmp_path: Path, name: str, content: str) -> None:
    write_tiny_tokenizer(tmp_path)
    (tmp_path / name).write_text(content, encoding="utf-8")
    with pytest.raises(CheckpointError, match=name):
        BagelTokenizer.from_folder(tmp_path)


def test_undecodable_file(tmp_path: Path) -> None:
    write_tiny_tokenizer(tmp_path)
    (tmp_path / "vocab.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(CheckpointError, match="vocab.json"):
        BagelTokenizer.from_folder(tmp_path)


def test_special_tokens_constant() -> None:
    assert BAGEL_SPECIAL_TOKENS == (IM_START, IM_END, VISION_START, VISION_END)


def test_tokenizers_load_in_concurrent_threads_of_a_fresh_process(tiny_dir: Path) -> None:
    # the app loads two models at once (the World page's and another page's); transformers'
    # first import, lazy, raised ImportError in all but one of the threads that raced it
    script = (
        "import sys, threading\n"
        "from bagel.tokenizer import BagelTokenizer\n"
        "errors = []\n"
        "def load():\n"
        "    try:\n"
        f"        BagelTokenizer.from_folder({str(tiny_dir)!r})\n"
        "    except Exception as exc:\n"
        "        errors.append(repr(exc))\n"
        "threads = [threading.Thread(target=load) for _ in range(4)]\n"
        "[t.start() for t in threads]\n"
        "[t.join() for t in threads]\n"
        "assert 'transformers' in sys.modules\n"
        "print(errors)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
