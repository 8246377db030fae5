"""Benchmark suites: TOML files naming dataset, model, training recipe, defenses, attacks, rates and seeds.

Packaged suites live in the ``configs`` package (found through ``importlib.resources``, so they are found whether
the project is installed editable or as a wheel); any other TOML file can be given by path.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import math
import os
import sys
from dataclasses import dataclass, field
from importlib import resources

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["Suite", "SuiteError", "load_suite", "list_suites", "suite_path", "stable_hash"]

_KEYS = {"name", "description", "dataset", "data_dir", "n_eval", "model", "model_options", "bits", "defenses",
         "attacks", "rates", "headline_rate", "patterns", "base_seed", "train_seed", "train", "augment"}


class SuiteError(ValueError):
    """A suite that cannot be found or is malformed."""


def stable_hash(obj, n: int = 16) -> str:
    """Hex digest of the canonical JSON of ``obj`` (sorted keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


@dataclass
class Suite:
    name: str
    dataset: str
    model: str
    description: str = ""
    data_dir: str | None = None
    n_eval: int | None = None
    model_options: dict = field(default_factory=dict)
    bits: int = 8
    defenses: list = field(default_factory=list)
    attacks: list = field(default_factory=list)
    rates: list = field(default_factory=list)
    headline_rate: float | None = None
    patterns: int = 50
    base_seed: int = 100
    train_seed: int = 0
    train: dict = field(default_factory=dict)
    augment: dict = field(default_factory=dict)
    path: str | None = None

    def __post_init__(self):
        def bad(msg):
            raise SuiteError(f"suite {self.name!r}{' (' + self.path + ')' if self.path else ''}: {msg}")

        for k in ("name", "dataset", "model"):
            if not isinstance(getattr(self, k), str) or not getattr(self, k):
                bad(f"{k!r} must be a non-empty string")
        if not isinstance(self.bits, int) or isinstance(self.bits, bool) or not 1 <= self.bits <= 32:
            bad(f"bits must be an integer (2..8 for unsigned codes), got {self.bits!r}")
        for k in ("defenses", "attacks", "rates"):
            if not isinstance(getattr(self, k), list):
                bad(f"{k!r} must be a list")
        for r in self.rates:
            if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 <= r <= 1 or math.isnan(r):
                bad(f"rates must be fractions in [0, 1] (0.01 = 1%), got {r!r}")
        if len(set(self.rates)) != len(self.rates):
            bad("rates contain duplicates")
        self.rates = sorted(float(r) for r in self.rates)
        if self.headline_rate is not None and self.rates and float(self.headline_rate) not in self.rates:
            bad(f"headline_rate {self.headline_rate} is not one of the rates {self.rates}")
        if not isinstance(self.patterns, int) or self.patterns < 1:
            bad(f"patterns must be an integer >= 1, got {self.patterns!r}")
        if not isinstance(self.base_seed, int) or self.base_seed < 0:
            bad(f"base_seed must be an integer >= 0, got {self.base_seed!r}")
        if self.n_eval is not None and (not isinstance(self.n_eval, int) or self.n_eval < 1):
            bad(f"n_eval must be an integer >= 1, got {self.n_eval!r}")
        for k in ("model_options", "train", "augment"):
            if not isinstance(getattr(self, k), dict):
                bad(f"[{k}] must be a table")

    @property
    def seeds(self) -> list[int]:
        return [self.base_seed + k for k in range(self.patterns)]

    def rate_attacks(self) -> list[str]:
        """One random-error attack spec per rate."""
        return [f"random_p{r!r}" for r in self.rates]

    def protocol(self, n_eval: int | None = None, eval_split: str | None = None) -> dict:
        """What makes two results comparable (the leaderboard checks it)."""
        return {"dataset": self.dataset, "eval_split": eval_split, "n_eval": n_eval if n_eval else self.n_eval,
                "bits": self.bits, "rates": list(self.rates), "patterns": self.patterns,
                "base_seed": self.base_seed}

    def to_dict(self) -> dict:
        d = {k: copy.deepcopy(getattr(self, k)) for k in sorted(_KEYS)}
        return d

    def replace(self, **kw) -> "Suite":
        d = self.to_dict()
        d.update(kw)
        return Suite(**d, path=self.path)


def list_suites() -> list[str]:
    """Names of the packaged suites."""
    try:
        files = resources.files("configs")
        return sorted(p.name[:-5] for p in files.iterdir() if p.name.endswith(".toml"))
    except (ModuleNotFoundError, FileNotFoundError):  # pragma: no cover
        return []


def suite_path(name_or_path: str) -> str:
    """A packaged suite's name (``default``), ``configs/<name>.toml`` or any TOML file path -> readable path."""
    if os.path.isfile(name_or_path):
        return name_or_path
    base = os.path.basename(name_or_path)
    name = base[:-5] if base.endswith(".toml") else base
    if name in list_suites():
        with resources.as_file(resources.files("configs") / f"{name}.toml") as p:
            return str(p)
    close = difflib.get_close_matches(name, list_suites(), n=3, cutoff=0.5)
    raise SuiteError(f"no suite {name_or_path!r}: not a file, and not a packaged suite"
                     + (f" (did you mean {', '.join(close)}?)" if close else "")
                     + f". Packaged suites: {', '.join(list_suites())}")


def load_suite(name_or_path: str = "default") -> Suite:
    path = suite_path(name_or_path)
    try:
        with open(path, "rb") as f:
            d = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise SuiteError(f"{path}: not valid TOML: {e}") from None
    unknown = sorted(set(d) - _KEYS)
    if unknown:
        raise SuiteError(f"{path}: unknown key(s) {unknown}; allowed: {sorted(_KEYS)}")
    missing = [k for k in ("name", "dataset", "model") if k not in d]
    if missing:
        raise SuiteError(f"{path}: missing required key(s) {missing}")
    return Suite(**d, path=path)
