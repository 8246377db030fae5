"""Text for language models: the byte tokenizer, the embedded corpus and local text files, cut into windows.

**Tokenizer** (:class:`ByteTokenizer`): a text's tokens are the bytes of its UTF-8 encoding, vocabulary 256 (token
``b`` is byte ``b``); nothing to train or download, every text round-trips exactly. Perplexities are per byte.

**Windows**: a split's token stream is cut into windows of ``context`` tokens, ``x = tokens[i:i+T]`` and
``y = tokens[i+1:i+T+1]`` (the next token at every position), for ``i = 0, stride, 2 stride, ...`` while the window
and its last label fit (the rest of the stream is not used). Training windows overlap by default (``stride`` =
``context / 2``); evaluation and attacker windows never do (stride = ``context``: every token is evaluated once).

**Splits** (deterministic, no random numbers; the evaluation text is never trained on and the attacker never sees
it):

* the embedded corpus (default; ``kjv.txt.gz``: Genesis, Exodus, Matthew and John of the King James Version,
  public domain, see ``NOTICE-kjv.md``), by chapter: chapters ``c`` with ``c mod 10 = 0`` (10, 20, ...) are the
  test text (evaluation), ``c mod 10 = 5`` (5, 15, ...) the validation text (the attacker's), every other chapter
  is training text; each split's chapters in book order, each chapter its verses one per line;
* a local UTF-8 text file (``--dataset text --data-dir corpus.txt``): the first 80% of its bytes train, the next
  10% the attacker's, the last 10% the evaluation text (cut at those byte offsets).

``n_eval`` keeps the first ``n_eval`` evaluation windows.
"""
from __future__ import annotations

import functools
import gzip
import os

import torch

from .dataset import DataError, Dataset, check_n_eval

__all__ = ["ByteTokenizer", "BYTES", "load_text", "windows", "corpus_chapters", "split_chapters", "KJV_PATH",
           "KJV_RULE", "FILE_RULE"]

KJV_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kjv.txt.gz")
KJV_RULE = ("by chapter: chapters 10, 20, ... (c mod 10 = 0) -> test (evaluation), 5, 15, ... (c mod 10 = 5) -> "
            "validation (attacker), the others -> train; in book order")
FILE_RULE = "by bytes: the first 80% -> train, the next 10% -> attacker, the last 10% -> test (evaluation)"


class ByteTokenizer:
    """Tokens are the bytes of the UTF-8 encoding (vocabulary 256, token b = byte b); no download, exact
    round trips."""

    name = "bytes"
    vocab_size = 256

    def encode(self, text: str) -> torch.Tensor:
        """int64 token ids of ``text``."""
        return self.encode_bytes(text.encode("utf-8"))

    def encode_bytes(self, data: bytes) -> torch.Tensor:
        return torch.frombuffer(bytearray(data), dtype=torch.uint8).to(torch.int64)

    def decode(self, tokens) -> str:
        """The text of token ids (invalid UTF-8, e.g. a window cut inside a character, decodes as U+FFFD)."""
        ids = torch.as_tensor(tokens).reshape(-1).tolist()
        return bytes(ids).decode("utf-8", errors="replace")


BYTES = ByteTokenizer()


def windows(tokens: torch.Tensor, context: int, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)``: windows ``x[k] = tokens[i:i+T]``, ``y[k] = tokens[i+1:i+T+1]`` for ``i = k * stride`` (int64
    ``[N, T]``; N = 0 when the stream holds fewer than T + 1 tokens)."""
    n = (tokens.numel() - context - 1) // stride + 1 if tokens.numel() > context else 0
    if n <= 0:
        empty = torch.empty(0, context, dtype=torch.int64)
        return empty, empty.clone()
    starts = torch.arange(n) * stride
    idx = starts.unsqueeze(1) + torch.arange(context + 1).unsqueeze(0)
    w = tokens[idx]
    return w[:, :-1].contiguous(), w[:, 1:].contiguous()


@functools.lru_cache(maxsize=1)
def corpus_chapters(path: str = KJV_PATH) -> tuple[tuple[str, int, str], ...]:
    """``(book, chapter, text)`` of every chapter of the embedded corpus (text: its verses, one per line)."""
    if not os.path.isfile(path):
        raise DataError(f"text: the embedded corpus {path} is missing from the installation (regenerate it with "
                        "scripts/make_embedded_text.py)")
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise DataError(f"text: the embedded corpus {path} is damaged ({e})") from None
    out, head, verses = [], None, []
    for line in lines:
        if line.startswith("#"):
            continue
        if line.startswith("= "):
            if head is not None:
                out.append((*head, "".join(v + "\n" for v in verses)))
            book, _, chap = line[2:].rpartition(" ")
            head, verses = (book, int(chap)), []
        elif head is not None:
            verses.append(line)
    if head is not None:
        out.append((*head, "".join(v + "\n" for v in verses)))
    if not out:
        raise DataError(f"text: the embedded corpus {path} holds no chapters")
    return tuple(out)


def split_chapters(chapters) -> dict[str, str]:
    """The embedded corpus's split rule (:data:`KJV_RULE`): ``{'train', 'attack', 'test'}`` -> text."""
    parts = {"train": [], "attack": [], "test": []}
    for _, c, text in chapters:
        parts["test" if c % 10 == 0 else "attack" if c % 10 == 5 else "train"].append(text)
    return {k: "".join(v) for k, v in parts.items()}


def _read_file(data_dir: str) -> tuple[str, bytes]:
    path = os.fspath(data_dir)
    if os.path.isdir(path):
        files = sorted(f for f in os.listdir(path) if f.endswith(".txt"))
        if len(files) != 1:
            raise DataError(f"text: expected a UTF-8 text file, or a folder holding exactly one .txt file; "
                            f"{os.path.abspath(path)} holds {files or 'none'}")
        path = os.path.join(path, files[0])
    if not os.path.isfile(path):
        raise DataError(f"text: {path} does not exist; --data-dir names a UTF-8 text file (or a folder with one "
                        ".txt file); without it the embedded corpus is used")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DataError(f"text: cannot read {path} ({e.strerror or e})") from None
    if not data.strip():
        raise DataError(f"text: {path} is empty; expected UTF-8 text to train and evaluate on")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"text: {path} is not UTF-8 text: invalid byte 0x{data[e.start]:02x} at offset {e.start} "
                        f"({e.reason}); convert it, e.g. iconv -f latin1 -t utf-8") from None
    return os.path.abspath(path), data


def _check_positive(v, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise DataError(f"text: {name} must be a positive integer, got {v!r}")
    return v


def load_text(data_dir: str | None = None, *, n_eval: int | None = None, context: int = 128,
              stride: int | None = None) -> Dataset:
    """The ``text`` dataset: the embedded corpus, or the UTF-8 text file ``data_dir``, as windows of ``context``
    byte tokens (training windows every ``stride`` tokens, default ``context // 2``); see the module doc."""
    context = _check_positive(context, "context")
    stride = max(1, context // 2) if stride is None else _check_positive(stride, "stride")
    if data_dir is None:
        chapters = corpus_chapters()
        parts = {k: v.encode("utf-8") for k, v in split_chapters(chapters).items()}
        info = {"source": "embedded corpus: the King James Version of the Bible, Genesis, Exodus, Matthew and John "
                          "(public domain except in the UK, Crown patent)", "file": KJV_PATH, "split": KJV_RULE,
                "notice": os.path.join(os.path.dirname(KJV_PATH), "NOTICE-kjv.md"), "chapters": len(chapters)}
    else:
        path, data = _read_file(data_dir)
        a, b = (8 * len(data)) // 10, (9 * len(data)) // 10
        parts = {"train": data[:a], "attack": data[a:b], "test": data[b:]}
        info = {"source": path, "split": FILE_RULE}
    streams = {k: BYTES.encode_bytes(v) for k, v in parts.items()}
    trx, try_ = windows(streams["train"], context, stride)
    atx, aty = windows(streams["attack"], context, context)
    tex, tey = windows(streams["test"], context, context)
    where = info["source"] if data_dir is not None else "the embedded corpus"
    for split, x, what in (("train", trx, "training"), ("attack", atx, "attacker"), ("test", tex, "evaluation")):
        if x.shape[0] == 0:
            raise DataError(f"text: {where}: the {what} text ({len(parts[split])} bytes) is too short for one window "
                            f"of {context} tokens (it needs {context + 1} bytes; a file needs about "
                            f"{10 * (context + 1)} bytes in all); use a longer text or a smaller context "
                            "(--dataset text:context=N)")
    if n_eval is not None:
        n = check_n_eval(n_eval, int(tex.shape[0]))
        tex, tey = tex[:n], tey[:n]
    info.update(task="next_token", tokenizer=f"{BYTES.name} (UTF-8 bytes, vocabulary {BYTES.vocab_size})",
                context=context, stride=stride,
                bytes={k: len(v) for k, v in parts.items()},
                sizes={"train": int(trx.shape[0]), "test": int(tex.shape[0]), "attack": int(atx.shape[0])},
                n_train=int(trx.shape[0]), eval_split=f"test[0:{tex.shape[0]}]",
                attack_split="validation text" if data_dir is None else "the attacker's 10% of the file")
    return Dataset(name="text", train_x=trx, train_y=try_, test_x=tex, test_y=tey, attack_x=atx, attack_y=aty,
                   num_classes=BYTES.vocab_size, mean=None, std=None, info=info)
