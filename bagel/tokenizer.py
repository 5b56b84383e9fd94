"""BAGEL's text side: the Qwen2 byte-level BPE tokenizer, its special ids and text framing.

The official model reads the tokenizer of its checkpoint folder (`vocab.json` +
`merges.txt` + `tokenizer_config.json`, spec §1.1, §2.1) and then makes sure four
special tokens exist (spec §2.2).  Every text item is framed as
`<|im_start|>` + BPE(text) + `<|im_end|>` (spec §2.3), and a generated reply is
decoded and cut at the special-token strings (spec §6.2 step 5).

Text is encoded as plain text: a special-token string typed in it (`<|im_start|>`, …)
becomes ordinary BPE pieces, never the special id, so a user's text cannot forge turn or
image boundaries. Only the framing here inserts special ids (the official code encodes
with split_special_tokens=False; for text without those strings the ids are the same).
Every text must be a sequence of Unicode scalar values: a lone surrogate (which no UTF-8
input can produce) is refused, never replaced (`check_text`).

`write_tiny_tokenizer` writes a small, deterministic tokenizer in the same file
layout, learned here with a pure-Python BPE over an embedded English corpus, so tests
and tiny random checkpoints need no download.
"""

from __future__ import annotations

import json
import operator
import re
import threading
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bagel.errors import CheckpointError, InputError

VOCAB_FILE = "vocab.json"
MERGES_FILE = "merges.txt"
TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
_IMPORT_LOCK = threading.Lock()

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"

# The four tokens the official `add_special_tokens` step checks (spec §2.2), in its order.
BAGEL_SPECIAL_TOKENS = (IM_START, IM_END, VISION_START, VISION_END)

# Spec §9.1: two lines each; line 1 ends with ". " before the newline; no final newline.
VLM_THINK_PROMPT = (
    "You should first think about the reasoning process in the mind and then provide the user "
    "with the answer. \n"
    "The reasoning process is enclosed within <think> </think> tags, i.e. "
    "<think> reasoning process here </think> answer here"
)
GEN_THINK_PROMPT = (
    "You should first think about the planning process in the mind and then generate the image. \n"
    "The planning process is enclosed within <think> </think> tags, i.e. "
    "<think> planning process here </think> image here"
)


def check_text(text: object, what: str = "text", blank_ok: bool = True) -> str:
    """Return `text` if it is a str of Unicode scalar values (no lone surrogate), and, unless
    `blank_ok`, holds a non-space character; else raise InputError naming `what`.

    The one rule for every text that reaches the model: prompts, questions, instructions,
    beats, scenario fields and the turns of a saved session."""
    if not isinstance(text, str):
        raise InputError(f"{what} must be a str, got {type(text).__name__}")
    bad = _LONE_SURROGATE.search(text)
    if bad is not None:
        raise InputError(
            f"{what} holds a lone surrogate U+{ord(bad.group()):04X} at character "
            f"{bad.start()}: not valid Unicode text"
        )
    if not blank_ok and not text.strip():
        raise InputError(f"{what} must be text with a non-space character, got {_preview(text)}")
    return text


def _preview(text: str) -> str:
    return repr(text) if len(text) <= 40 else f"{len(text)} characters of white space"


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def split_reply(text: str) -> str:
    """Cut a decoded generation the way the official `gen_text` does (spec §6.2 step 5).

    Keep the text before the first `<|im_end|>`; of that, keep the text after the first
    `<|im_start|>`.  "After the first" follows the reference literally: it takes the piece
    between the first `<|im_start|>` and the next one, if the model produced a second
    (`text.split(eos)[0].split(bos)[1]`).  The cut works on the decoded string, so
    marker text spelled out by ordinary BPE pieces is cut as well, as in the reference.
    No whitespace is trimmed.  Where no `<|im_start|>` is present (the reference would
    raise IndexError) the text before `<|im_end|>` is returned whole.
    """
    if not isinstance(text, str):
        raise InputError(f"reply text must be a str, got {type(text).__name__}")
    before_end = text.split(IM_END, 1)[0]
    pieces = before_end.split(IM_START)
    if len(pieces) < 2:
        return before_end
    return pieces[1]


class BagelTokenizer:
    """A transformers `Qwen2Tokenizer` plus BAGEL's special ids and framing.

    Attributes:
        bos_id: id of `<|im_start|>` (start of every text segment; generation start token).
        eos_id: id of `<|im_end|>` (end of every text segment; the only stop token).
        start_of_image_id: id of `<|vision_start|>`.
        end_of_image_id: id of `<|vision_end|>`.
        vocab_len: `len(tokenizer)`, added tokens included (may be below the model's
            embedding rows, which are padded).
        num_added_tokens: tokens the special-token step had to add (0 for Qwen2.5).
    """

    def __init__(self, hf_tokenizer: Any, *, source: str = "<memory>") -> None:
        self._tok = hf_tokenizer
        self.source = source
        self.num_added_tokens = _ensure_special_tokens(hf_tokenizer, source)
        ids = {}
        for token in BAGEL_SPECIAL_TOKENS:
            token_id = hf_tokenizer.convert_tokens_to_ids(token)
            if not isinstance(token_id, int) or token_id < 0:
                raise CheckpointError(f"tokenizer in {source}: no id for special token {token}")
            ids[token] = token_id
        if len(set(ids.values())) != len(ids):
            raise CheckpointError(f"tokenizer in {source}: special tokens share ids: {ids}")
        self.bos_id: int = ids[IM_START]
        self.eos_id: int = ids[IM_END]
        self.start_of_image_id: int = ids[VISION_START]
        self.end_of_image_id: int = ids[VISION_END]
        self.vocab_len: int = len(hf_tokenizer)

    # -- loading -------------------------------------------------------------------------

    @classmethod
    def from_folder(cls, path: str | Path) -> BagelTokenizer:
        """Load the tokenizer of a checkpoint folder.

        Needs `vocab.json` and `merges.txt`, or `tokenizer.json`; reads
        `tokenizer_config.json` when present.  Raises CheckpointError for a missing,
        unreadable or malformed file, naming it.
        """
        folder = Path(path)
        if not folder.is_dir():
            raise CheckpointError(f"tokenizer folder {folder} does not exist or is not a folder")
        has_json = (folder / TOKENIZER_JSON).is_file()
        missing = [name for name in (VOCAB_FILE, MERGES_FILE) if not (folder / name).is_file()]
        if missing and not has_json:
            raise CheckpointError(
                f"tokenizer files missing in {folder}: {', '.join(missing)} "
                f"(and no {TOKENIZER_JSON} to fall back on)"
            )
        if not missing:
            _check_vocab_file(folder / VOCAB_FILE)
            _check_merges_file(folder / MERGES_FILE)
        if has_json:
            _check_tokenizer_json(folder / TOKENIZER_JSON)
        if (folder / TOKENIZER_CONFIG).is_file():
            _check_json_object(folder / TOKENIZER_CONFIG)

        with _IMPORT_LOCK:  # transformers' lazy first import fails in concurrent threads
            from transformers import Qwen2Tokenizer

        try:
            hf = Qwen2Tokenizer.from_pretrained(
                str(folder), local_files_only=True, split_special_tokens=False
            )
        except Exception as exc:
            raise CheckpointError(f"cannot load the tokenizer in {folder}: {exc}") from exc
        return cls(hf, source=str(folder))

    # -- text -> ids ---------------------------------------------------------------------

    @property
    def hf_tokenizer(self) -> Any:
        """The wrapped transformers tokenizer."""
        return self._tok

    @property
    def new_token_ids(self) -> dict[str, int]:
        """The ids under the official key names (spec §2.2)."""
        return {
            "bos_token_id": self.bos_id,
            "eos_token_id": self.eos_id,
            "start_of_image": self.start_of_image_id,
            "end_of_image": self.end_of_image_id,
        }

    def __len__(self) -> int:
        return self.vocab_len

    def encode(self, text: str) -> list[int]:
        """BPE ids of `text` as plain text; no bos/eos added.

        Special-token strings typed in the text (`<|im_end|>`, ...) are split into ordinary
        pieces (split_special_tokens=True), so they never become special ids (module doc).
        """
        check_text(text)
        return list(self._tok.encode(text, add_special_tokens=False, split_special_tokens=True))

    def frame(self, text: str) -> list[int]:
        """One text segment: `[bos_id] + encode(text) + [eos_id]` (spec §2.3).

        This is BAGEL's only text framing: no role words and no newlines.
        """
        return [self.bos_id, *self.encode(text), self.eos_id]

    # -- ids -> text ---------------------------------------------------------------------

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`, special tokens kept, no clean-up of spaces.

        Accepts a sequence of ints (or anything with `.tolist()`, e.g. a 1-D tensor).
        Ids at or past `vocab_len` (padded embedding rows, which the model can sample
        because the reference does not mask them) decode to nothing.
        """
        checked = _check_ids(ids)
        known = [i for i in checked if i < self.vocab_len]
        return self._tok.decode(
            known, skip_special_tokens=False, clean_up_tokenization_spaces=False
        )

    def reply_text(self, ids: Iterable[int]) -> str:
        """Decode a generated reply and cut it as the reference does; see `split_reply`."""
        return split_reply(self.decode(ids))


# -- helpers for loading ---------------------------------------------------------------------


def _ensure_special_tokens(hf: Any, source: str) -> int:
    """The official `add_special_tokens` step: add the four BAGEL tokens if not special.

    Tokens already in the vocabulary keep their ids; a token absent from it is added at
    the end as a special token.  Returns how many new ids were created.
    """
    special = set(getattr(hf, "all_special_tokens", []))
    added = getattr(hf, "added_tokens_decoder", {}) or {}
    special |= {str(tok) for tok in added.values() if getattr(tok, "special", False)}
    missing = [tok for tok in BAGEL_SPECIAL_TOKENS if tok not in special]
    if not missing:
        return 0
    from tokenizers import AddedToken

    before = len(hf)
    try:
        hf.add_tokens(
            [AddedToken(tok, special=True, normalized=False) for tok in missing],
            special_tokens=True,
        )
    except Exception as exc:
        raise CheckpointError(
            f"tokenizer in {source}: cannot add special tokens {missing}: {exc}"
        ) from exc
    return len(hf) - before


def _read_text(file: Path) -> str:
    try:
        return file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"cannot read tokenizer file {file}: {exc}") from exc


def _check_json_object(file: Path) -> dict[str, Any]:
    try:
        data = json.loads(_read_text(file))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"tokenizer file {file} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"tokenizer file {file} must hold a JSON object")
    return data


def _check_vocab_file(file: Path) -> None:
    vocab = _check_json_object(file)
    if not vocab:
        raise CheckpointError(f"tokenizer file {file} holds an empty vocabulary")
    for token, token_id in vocab.items():
        if type(token_id) is not int or token_id < 0:
            raise CheckpointError(
                f"tokenizer file {file}: token {token!r} has id {token_id!r}, "
                "expected a non-negative integer"
            )
    if len(set(vocab.values())) != len(vocab):
        raise CheckpointError(f"tokenizer file {file}: two tokens share an id")


def _check_merges_file(file: Path) -> None:
    for number, line in enumerate(_read_text(file).splitlines(), start=1):
        if not line or (number == 1 and line.startswith("#version")):
            continue
        if len(line.split(" ")) != 2:
            raise CheckpointError(
                f"tokenizer file {file}, line {number}: expected two symbols separated by "
                f"one space, got {line[:80]!r}"
            )


def _check_tokenizer_json(file: Path) -> None:
    data = _check_json_object(file)
    model = data.get("model")
    if not isinstance(model, dict) or not isinstance(model.get("vocab"), dict):
        raise CheckpointError(f"tokenizer file {file}: no BPE model with a vocab in it")


def _check_ids(ids: Iterable[int]) -> list[int]:
    if isinstance(ids, (str, bytes)):
        raise InputError(f"token ids must be a sequence of ints, got {type(ids).__name__}")
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    if isinstance(ids, int):
        raise InputError("token ids must be a sequence of ints, got a single int")
    try:
        out = list(ids)
    except TypeError as exc:
        raise InputError(f"token ids must be a sequence of ints, got {type(ids).__name__}") from exc
    checked = []
    for i in out:
        try:
            value = operator.index(i)
        except TypeError:
            value = -1
        if isinstance(i, bool) or value < 0:
            raise InputError(f"token ids must be non-negative ints, got {i!r}")
        checked.append(value)
    return checked


# -- the tiny test tokenizer ---------------------------------------------------------------

TINY_PAD_ROWS = 24  # embedding rows left without a token, like the padded real vocabulary
TINY_SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END, VISION_START, VISION_END)

_TINY_CORPUS = """
The camera is on a street. Walk forward along the street and look at the red car on the
left. Turn left at the corner and walk forward again. Turn right and the blue door is in
front of the camera. The cat sits on the red wall and the dog runs down the street.
A small dog walks forward and then turns right. A black cat turns left and looks at the
camera. The image shows a street with a red house on the left and a blue house on the right.
Generate an image of a cat and a dog on a green hill under a blue sky.
Move the camera forward. Move the camera back. Turn the camera left. Turn the camera right.
Look up at the sky. Look down at the road. The road goes forward into the city.
What is in the image? The image shows a cat. What color is the car? The car is red.
Where is the dog? The dog is on the left side of the street, next to the blue bike.
Describe the scene in the image. There is a tall tree, a white house, a red bus and two
people who walk along the street in the morning light.
The user asks the model to plan the next view. The model thinks about the scene, plans the
motion of the camera, and then generates the new image of the world after the action.
Each step moves the camera one meter forward or turns it thirty degrees to the left or to
the right. The world stays the same while the camera moves through it.
Edit the image: make the cat blue, add a hat to the dog, remove the car from the street.
The light is warm and the shadows are long. The water in the river is calm and clear.
A person rides a bike over the bridge. Birds fly over the trees near the river.
Think about the answer first, then write the answer in one short sentence.
The reasoning is short: the cat is on the wall, so the answer is the wall.
The planning is short: a red cat, a blue dog, a green street, and a bright camera view.
Walk forward, turn left, walk forward, turn right, walk forward, stop, and look around.
The kitchen has a table, four chairs, a window, and a bowl of fruit on the counter.
In the garden there are flowers, a small pond, a stone path and a wooden bench.
The mountain is high and the snow on the top is white. The valley below is green.
Numbers: one two three four five six seven eight nine ten, 0 1 2 3 4 5 6 7 8 9.
"""

# Learning-only pre-tokeniser (ASCII corpus): GPT-2 style, a word keeps its leading space,
# digits stand alone, punctuation runs form their own pieces.
_LEARN_PIECES = re.compile(r" ?[A-Za-z]+| ?[0-9]| ?[^\sA-Za-z0-9]+|\s+")


def _bytes_to_unicode() -> list[tuple[int, str]]:
    """GPT-2's reversible byte -> printable character table, in vocabulary order."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    table = [(b, chr(b)) for b in printable]
    extra = 0
    for b in range(256):
        if b not in printable:
            table.append((b, chr(256 + extra)))
            extra += 1
    return table


def _learn_bpe(corpus: str, target_vocab: int) -> tuple[list[str], list[tuple[str, str]]]:
    """Learn merges until the vocabulary has `target_vocab` entries (or no pair is left).

    Deterministic: the most frequent adjacent pair wins; ties go to the smallest pair
    in string order.  Returns (vocabulary in id order, merges in rank order).
    """
    byte_char = dict(_bytes_to_unicode())
    vocab = [char for _, char in _bytes_to_unicode()]
    known = set(vocab)
    piece_counts = Counter(_LEARN_PIECES.findall(" ".join(corpus.split())))
    words = [
        [[byte_char[b] for b in piece.encode("utf-8")], count]
        for piece, count in sorted(piece_counts.items())
    ]
    merges: list[tuple[str, str]] = []
    while len(vocab) < target_vocab:
        pairs: Counter[tuple[str, str]] = Counter()
        for symbols, count in words:
            for pair in zip(symbols, symbols[1:], strict=False):
                pairs[pair] += count
        if not pairs:
            break
        best = min(pairs.items(), key=lambda item: (-item[1], item[0]))[0]
        merged = best[0] + best[1]
        merges.append(best)
        if merged not in known:
            known.add(merged)
            vocab.append(merged)
        for word in words:
            symbols = word[0]
            out: list[str] = []
            i = 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(merged)
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            word[0] = out
    return vocab, merges


def write_tiny_tokenizer(folder: str | Path, vocab_size: int = 512) -> None:
    """Write a small Qwen2-layout byte-level BPE tokenizer into `folder`.

    Files: `vocab.json` (the 256 byte symbols in GPT-2 order, then the learned merged
    tokens), `merges.txt` (`#version: 0.2`, then one merge per line in rank order) and
    `tokenizer_config.json` (Qwen2.5-Instruct style: the five special tokens as added
    tokens right after the BPE vocabulary, eos `<|im_end|>`, pad `<|endoftext|>`, no bos).
    The tokenizer's length is at most `vocab_size - TINY_PAD_ROWS`, so a model with
    `vocab_size` embedding rows has unused padded rows like the real one.  The bytes
    written depend only on `vocab_size`.
    """
    if type(vocab_size) is not int:
        raise InputError(f"vocab_size must be an int, got {type(vocab_size).__name__}")
    smallest = 256 + len(TINY_SPECIAL_TOKENS) + TINY_PAD_ROWS
    if vocab_size < smallest:
        raise InputError(f"vocab_size must be at least {smallest}, got {vocab_size}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    bpe_size = vocab_size - TINY_PAD_ROWS - len(TINY_SPECIAL_TOKENS)
    corpus = "\n".join((_TINY_CORPUS, VLM_THINK_PROMPT, GEN_THINK_PROMPT))
    vocab, merges = _learn_bpe(corpus, bpe_size)
    vocab_json = {token: i for i, token in enumerate(vocab)}

    added_tokens_decoder = {
        str(len(vocab) + k): {
            "content": token,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for k, token in enumerate(TINY_SPECIAL_TOKENS)
    }
    config = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": added_tokens_decoder,
        "additional_special_tokens": list(BAGEL_SPECIAL_TOKENS),
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "eos_token": IM_END,
        "errors": "replace",
        "model_max_length": 32768,
        "pad_token": ENDOFTEXT,
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }

    _write(folder / VOCAB_FILE, json.dumps(vocab_json, ensure_ascii=False) + "\n")
    _write(folder / MERGES_FILE, "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    _write(folder / TOKENIZER_CONFIG, json.dumps(config, ensure_ascii=False, indent=2) + "\n")


def _write(file: Path, text: str) -> None:
    with open(file, "w", encoding="utf-8", newline="\n") as handle:
        handle.write(text)
