"""Build the embedded text corpus ``benchmark/data/kjv.txt.gz`` (the ``text`` dataset's default) once, offline.

Source: the King James Version of the Bible as the Debian package ``bible-kjv-text`` carries it, read through the
reader of the package ``bible-kjv`` (``apt-get install bible-kjv``; it prints a verse range as one labelled line
per verse: ``bible -f -l0 "Ge1:1-999"`` -> ``Ge1:1 In the beginning God created the heaven and the earth.``).

What the script does, deterministically:

1. for every chapter of the books below it asks the reader for verses 1..999 of that chapter, checks every label
   (the chapter asked for, verses 1, 2, 3, ... without a gap: the reader clamps a chapter past the end of a book to
   the last one, which this check refuses) and strips the labels;
2. writes one UTF-8 text file, gzip-compressed with a zero timestamp (the same bytes on every run): a header of
   ``#`` lines (source, licence, format), then per chapter a line ``= <Book> <chapter>`` followed by its verses, one
   per line.

The split into train / validation / test text by chapter is the dataset's rule (``benchmark/data/text.py``), not
the file's. Usage: ``python scripts/make_embedded_text.py [--out benchmark/data/kjv.txt.gz]``.
"""
from __future__ import annotations

import argparse
import gzip
import os
import re
import subprocess
import sys

# (name in the file, the reader's book name, chapters): Genesis, Exodus, Matthew and John (about 590 KB of text).
BOOKS = (("Genesis", "Genesis", 50), ("Exodus", "Exodus", 40), ("Matthew", "Matthew", 28), ("John", "John", 21))
LABEL = re.compile(r"^([1-3]?[A-Za-z]+)(\d+):(\d+) (.*)$")
HEADER = """\
# The King James Version of the Bible (1611; Debian package bible-kjv-text 4.38, read with its reader `bible`):
# the books of Genesis, Exodus, Matthew and John, verse labels removed. Public domain, except in the United Kingdom,
# where the Crown's letters patent restrict printing it (see NOTICE-kjv.md). Made by scripts/make_embedded_text.py.
# Format: a line '= <Book> <chapter>' starts a chapter; each following line is one verse.
"""


def chapter_verses(reader: str, book: str, chapter: int) -> list[str]:
    out = subprocess.run([reader, "-f", "-l0", f"{book} {chapter}:1-999"], capture_output=True, text=True,
                         check=True, env={**os.environ, "COLUMNS": "0"}).stdout
    verses = []
    for line in out.splitlines():
        if not line.strip():
            continue
        m = LABEL.match(line)
        if m is None:
            raise SystemExit(f"{book} {chapter}: unexpected line from the reader: {line[:80]!r}")
        c, v, text = int(m.group(2)), int(m.group(3)), m.group(4).strip()
        if c != chapter or v != len(verses) + 1:
            raise SystemExit(f"{book} {chapter}: the reader gave {m.group(1)}{c}:{v} (expected chapter {chapter}, "
                             f"verse {len(verses) + 1}); is the chapter count right?")
        if not text:
            raise SystemExit(f"{book} {chapter}:{v}: empty verse")
        verses.append(text)
    if not verses:
        raise SystemExit(f"{book} {chapter}: no verses")
    return verses


def build(reader: str = "bible") -> str:
    parts = [HEADER]
    for name, book, chapters in BOOKS:
        for c in range(1, chapters + 1):
            parts.append(f"= {name} {c}\n")
            parts.extend(v + "\n" for v in chapter_verses(reader, book, c))
    text = "".join(parts)
    text.encode("ascii")  # the source is plain ASCII; anything else would be a reader problem
    return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--out", default=os.path.join(here, "benchmark", "data", "kjv.txt.gz"))
    ap.add_argument("--reader", default="bible", help="the bible-kjv reader program")
    args = ap.parse_args(argv)
    text = build(args.reader)
    data = gzip.compress(text.encode("utf-8"), compresslevel=9, mtime=0)
    with open(args.out, "wb") as f:
        f.write(data)
    print(f"{args.out}: {len(text.encode())} bytes of text, {len(data)} compressed", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
