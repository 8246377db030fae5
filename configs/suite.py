"""The suite format: one TOML file naming dataset, model, training recipe, defenses, attacks, rates and seeds.

One parser and one validator for the harness and the leaderboard alike. Packaged suites are the ``*.toml`` files
of this package (found with ``importlib.resources``, installed editable or as a wheel); any other TOML file can be
given by path, and the leaderboard can look names up in other folders (``configs_dirs``).

The *protocol* of a suite -- what makes two results comparable -- is dataset, eval split, bits, rates, patterns and
base_seed (:attr:`Suite.protocol`). Rates are fractions, stored canonically (:func:`~.spec.canonical_rate`).
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path

from .errors import UsageError
from .spec import canonical_rate

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["Suite", "SuiteError", "load_suite", "list_suites", "suite_path", "packaged_suites_dir", "same_rate",
           "rate_key", "format_rate", "stable_hash", "EVAL_SPLIT_RE", "TRAIN_KEYS", "AUGMENT_KEYS",
           "DATASET_MODEL_OPTIONS", "MAX_PATTERNS", "SUITE_NAME_RE"]

EVAL_SPLIT_RE = re.compile(r"test\[(\d+):(\d+)\]")
# A suite's name: a folder of results/ and of leaderboard entries (never a path, never hidden)
SUITE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

# The keys a suite may set in [train] (fields of defenses.TrainConfig; the seed is the suite's train_seed and the
# device is --device) and in [augment] (benchmark.data.Augment.KEYS). The core has no torch: a test keeps these
# equal to the classes'.
TRAIN_KEYS = ("epochs", "batch_size", "lr", "momentum", "nesterov", "weight_decay", "schedule", "milestones",
              "gamma", "threads", "optimizer")
_TRAIN_ELSEWHERE = {"seed": "the top-level train_seeds (or train_seed)", "device": "--device on the command line",
                    "progress": "--no-progress on the command line"}
AUGMENT_KEYS = ("crop", "flip", "autoaugment", "cutout", "fill")
# Model builder arguments that come from the dataset (or the suite), never from [model_options].
DATASET_MODEL_OPTIONS = {"num_classes": "the dataset's classes", "in_channels": "the dataset's image channels",
                         "image_size": "the dataset's image size", "mean": "the training images' channel means",
                         "std": "the training images' channel stds", "seed": "the suite's train_seeds"}
MAX_PATTERNS = 1 << 32  # bit-error patterns per rate (seeds base_seed .. base_seed + patterns - 1)


class SuiteError(UsageError):
    """A suite that cannot be found or is malformed."""


def same_rate(a: float, b: float) -> bool:
    """Two rates are the same rate (compared after canonical rounding, with a tiny tolerance)."""
    return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-15)


def rate_key(rate: float) -> str:
    """A canonical string for a rate (for dict keys and column matching)."""
    return f"{float(rate):.10g}"


def format_rate(rate: float) -> str:
    """A rate as percent for humans: 0.0001 -> '0.01%'."""
    return f"{float(rate) * 100:.6g}%"


def stable_hash(obj, n: int = 16) -> str:
    """Hex digest of the canonical JSON of ``obj`` (sorted keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


@dataclass
class Suite:
    """A benchmark suite (see the module docstring and docs/formats.md)."""

    name: str
    dataset: str
    model: str
    description: str = ""
    data_dir: str | None = None
    n_eval: int | None = None
    eval_split: str | None = None  # 'test[0:N]' where the suite pins its evaluation images (eval_split or n_eval)
    model_options: dict = field(default_factory=dict)
    bits: int = 8
    defenses: list = field(default_factory=list)
    attacks: list = field(default_factory=list)
    rates: list = field(default_factory=list)
    headline_rate: float | None = None
    patterns: int = 50
    base_seed: int = 100
    train_seed: int | None = None      # one model (the first of train_seeds; a suite gives either)
    train_seeds: list | None = None    # several models per defense, each its own cached checkpoint
    metrics: list = field(default_factory=list)   # plug-in metrics measured besides the built-ins
    train: dict = field(default_factory=dict)
    augment: dict = field(default_factory=dict)
    path: str | None = field(default=None, compare=False)

    def __post_init__(self):
        where = f"suite {self.name!r}" + (f" ({self.path})" if self.path else "")

        def bad(msg):
            raise SuiteError(f"{where}: {msg}")

        def is_int(v):
            return isinstance(v, int) and not isinstance(v, bool)

        for k in ("name", "dataset", "model"):
            if not isinstance(getattr(self, k), str) or not getattr(self, k):
                bad(f"{k!r} must be a non-empty string, got {getattr(self, k)!r}")
        if not SUITE_NAME_RE.fullmatch(self.name):  # the name is a folder of results and of leaderboard entries
            stem = self.path is not None and Path(self.path).stem == self.name
            bad(f"'name' must be a plain name (letters, digits, '.', '_', '-'; starting with a letter or digit; at "
                f"most 64 characters), got {self.name!r}"
                + (" (a suite file without 'name' is named after its file)" if stem else ""))
        if not isinstance(self.description, str):
            bad(f"'description' must be a string, got {self.description!r}")
        self.description = self.description.strip()
        if self.data_dir is not None and not isinstance(self.data_dir, str):
            bad(f"'data_dir' must be a string (a folder), got {self.data_dir!r}")
        if not is_int(self.bits) or not 1 <= self.bits <= 32:
            bad(f"'bits' must be an integer in 1..32, got {self.bits!r}")
        for k in ("defenses", "attacks", "rates"):
            if not isinstance(getattr(self, k), (list, tuple)):
                bad(f"{k!r} must be a list, got {getattr(self, k)!r}")
        for k in ("defenses", "attacks"):
            for v in getattr(self, k):
                if not isinstance(v, str) or not v.strip():
                    bad(f"{k!r} must hold spec strings, got {v!r}")
        self.defenses, self.attacks = list(self.defenses), list(self.attacks)
        rates = []
        for i, r in enumerate(self.rates):
            if isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r) or not 0 <= r <= 1:
                bad(f"rates[{i}]: rates are fractions in [0, 1] (0.01 = 1%), got {r!r}")
            r = canonical_rate(r)
            for j, q in enumerate(rates):
                if same_rate(r, q):
                    bad(f"rates[{i}]: duplicate rate {r!r}")
            rates.append(r)
        self.rates = sorted(rates)
        if self.headline_rate is not None:
            h = self.headline_rate
            if isinstance(h, bool) or not isinstance(h, (int, float)):
                bad(f"'headline_rate' must be a rate, got {h!r}")
            match = [r for r in self.rates if same_rate(r, h)]
            if self.rates and not match:
                bad(f"headline_rate: {h!r} is not one of the suite's rates {self.rates}")
            self.headline_rate = match[0] if match else canonical_rate(h)
        elif self.rates:
            self.headline_rate = self.rates[-1]
        if not is_int(self.patterns) or not 1 <= self.patterns <= MAX_PATTERNS:
            bad(f"'patterns' must be an integer in [1, {MAX_PATTERNS}], got {self.patterns!r}")
        if not is_int(self.base_seed) or not 0 <= self.base_seed < (1 << 64) - self.patterns:
            bad(f"'base_seed' must be an integer in [0, 2^64 - patterns), got {self.base_seed!r}")
        if self.train_seeds is None:
            seed = 0 if self.train_seed is None else self.train_seed
            if not is_int(seed) or not 0 <= seed < 1 << 62:
                bad(f"'train_seed' must be an integer in [0, 2^62), got {seed!r}")
            self.train_seeds = [seed]
        else:
            if self.train_seed is not None:
                bad("give either 'train_seed' (one model) or 'train_seeds' (several), not both")
            ts = self.train_seeds
            if not isinstance(ts, (list, tuple)) or not ts or not all(is_int(x) and 0 <= x < 1 << 62 for x in ts):
                bad(f"'train_seeds' must be a non-empty list of integers in [0, 2^62), got {ts!r}")
            if len(set(ts)) != len(ts):
                bad(f"'train_seeds' holds a seed twice: {list(ts)!r}")
            self.train_seeds = list(ts)
        self.train_seed = self.train_seeds[0]
        if not isinstance(self.metrics, (list, tuple)) or not all(isinstance(m, str) and m.strip()
                                                                  for m in self.metrics):
            bad(f"'metrics' must be a list of metric specs, got {self.metrics!r}")
        self.metrics = list(self.metrics)
        if self.n_eval is not None and (not is_int(self.n_eval) or self.n_eval < 1):
            bad(f"'n_eval' must be an integer >= 1, got {self.n_eval!r}")
        if self.eval_split is not None:
            m = EVAL_SPLIT_RE.fullmatch(self.eval_split) if isinstance(self.eval_split, str) else None
            if not m or int(m.group(1)) != 0 or int(m.group(2)) < 1:
                bad(f"'eval_split' must be 'test[0:N]' (the first N test images), got {self.eval_split!r}")
            n = int(m.group(2))
            if self.n_eval is not None and self.n_eval != n:
                bad(f"eval_split {self.eval_split!r} and n_eval = {self.n_eval} disagree")
            self.n_eval = n
        elif self.n_eval is not None:
            self.eval_split = f"test[0:{self.n_eval}]"
        for k in ("model_options", "train", "augment"):
            if not isinstance(getattr(self, k), dict):
                bad(f"[{k}] must be a table, got {getattr(self, k)!r}")
        for k in sorted(self.train):
            if k in _TRAIN_ELSEWHERE:
                bad(f"[train] {k}: not a [train] key here; it is set by {_TRAIN_ELSEWHERE[k]}")
            if k not in TRAIN_KEYS:
                bad(f"[train] unknown key {k!r}{_close(k, TRAIN_KEYS)}; allowed: {', '.join(TRAIN_KEYS)}")
        for k in sorted(self.augment):
            if k not in AUGMENT_KEYS:
                bad(f"[augment] unknown key {k!r}{_close(k, AUGMENT_KEYS)}; allowed: {', '.join(AUGMENT_KEYS)}")
        for k in sorted(self.model_options):
            if k in DATASET_MODEL_OPTIONS:
                bad(f"[model_options] {k}: set by {DATASET_MODEL_OPTIONS[k]}, not by the suite; remove it")

    # -- derived -----------------------------------------------------------------------------------------------
    @property
    def seeds(self) -> list[int]:
        return [self.base_seed + k for k in range(self.patterns)]

    @property
    def protocol(self) -> dict:
        """What makes two results comparable (the leaderboard checks it)."""
        return {"dataset": self.dataset, "eval_split": self.eval_split, "bits": self.bits,
                "rates": list(self.rates), "patterns": self.patterns, "base_seed": self.base_seed}

    def rate_attacks(self) -> list[str]:
        """One random-error attack spec per rate."""
        return [f"random_p{r!r}" for r in self.rates]

    def to_dict(self) -> dict:
        """The suite's keys (``train_seed``, derived from ``train_seeds``, left out)."""
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self) if f.name not in ("path",
                                                                                                     "train_seed")}

    def replace(self, **kw) -> "Suite":
        d = self.to_dict()
        if "train_seed" in kw:
            d["train_seeds"] = None
        d.update(kw)
        if "n_eval" in kw and "eval_split" not in kw:
            d["eval_split"] = None  # re-derived from n_eval
        return Suite(**d, path=self.path)


_KEYS = {f.name for f in fields(Suite)} - {"path"}


def _close(name: str, allowed) -> str:
    m = difflib.get_close_matches(name, list(allowed), n=1, cutoff=0.6)
    return f" (did you mean {m[0]!r}?)" if m else ""


def packaged_suites_dir() -> Path | None:
    """The folder of the packaged suite files (this package), or None if it cannot be read as a folder."""
    try:
        res = resources.files("bitbench.configs")
        p = Path(str(res))
        return p if p.is_dir() else None
    except (ModuleNotFoundError, TypeError):  # pragma: no cover
        return None


def _dirs(configs_dirs) -> list[Path]:
    if configs_dirs is None:
        d = packaged_suites_dir()
        return [d] if d is not None else []
    if isinstance(configs_dirs, (str, os.PathLike)):
        return [Path(configs_dirs)]
    return [Path(d) for d in configs_dirs]


def list_suites(configs_dirs=None) -> list[str]:
    """Names of the suites in the given folders (default: the packaged suites)."""
    names = set()
    for d in _dirs(configs_dirs):
        if d.is_dir():
            names.update(p.stem for p in d.glob("*.toml"))
    return sorted(names)


def suite_path(name_or_path, configs_dirs=None) -> Path:
    """A suite name (looked up in ``configs_dirs``, default the packaged suites) or a TOML path -> its file."""
    s = os.fspath(name_or_path)
    if os.path.isfile(s):
        return Path(s)
    if ("/" in s or os.sep in s) and not re.fullmatch(r"configs[/\\][^/\\]+\.toml", s):
        raise SuiteError(f"suite file not found: {s}")
    name = os.path.basename(s)
    name = name[:-5] if name.endswith(".toml") else name
    for d in _dirs(configs_dirs):
        p = d / f"{name}.toml"
        if p.is_file():
            return p
    known = list_suites(configs_dirs)
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    where = ", ".join(str(d) for d in _dirs(configs_dirs)) or "no suite folder found"
    raise SuiteError(f"unknown suite {s!r}: not a file, and no {name}.toml in {where}"
                     + (f" (did you mean {', '.join(close)}?)" if close else "")
                     + (". Packaged suites" if configs_dirs is None else "; known") + f": {', '.join(known) or 'none'}")


def load_suite(name_or_path="default", configs_dirs=None) -> Suite:
    """Read and validate a suite by name or path (:class:`SuiteError` with the file and the problem)."""
    path = suite_path(name_or_path, configs_dirs)
    try:
        with open(path, "rb") as f:
            d = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise SuiteError(f"{path}: not valid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise SuiteError(f"{path}: not valid TOML: not UTF-8 text (byte {e.start})") from None
    except RecursionError:
        raise SuiteError(f"{path}: not valid TOML for a suite: nested too deeply") from None
    except OSError as e:
        raise SuiteError(f"{path}: cannot read the suite file ({e.strerror or e})") from None
    unknown = sorted(set(d) - _KEYS)
    if unknown:
        raise SuiteError(f"{path}: unknown key(s) {unknown}; allowed: {sorted(_KEYS)}")
    missing = [k for k in ("dataset", "model") if k not in d]
    if missing:
        raise SuiteError(f"{path}: missing required key(s) {missing}")
    d.setdefault("name", path.stem)
    return Suite(**d, path=str(path))
