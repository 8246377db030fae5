"""The result record: what one (suite, defense, attack) cell measured, one JSON file per cell.

:class:`ResultRecord` is the one type for it: the harness builds it, tables print it, the leaderboard turns it into
entries. Per-pattern results are stored once (:class:`PatternResult`, one per bit-error pattern / chip); the
summary (mean, std, min, max of RErr) is always computed from them, never stored on its own authority: a record
read from disk whose stored summary does not match its per-pattern values is refused. Every file carries a content
digest (``digest``: SHA-256 of the canonical JSON of all its other fields, :func:`record_digest`) verified on load:
an edited or damaged record is refused, never reused or published. Errors are fractions in [0, 1]. Field
reference: docs/formats.md.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import UsageError
from .fileio import canonical_json, sha256_bytes

__all__ = ["RECORD_FORMAT", "MODEL_SOURCES", "RecordError", "Summary", "PatternResult", "ResultRecord",
           "record_digest"]

RECORD_FORMAT = "bitbench.result/2"
# where the evaluated weights came from: trained by this benchmark with the defense's recipe (now, from its cache,
# or a leaderboard entry's checkpoint), or supplied by the user (the defense spec names only the storage format)
MODEL_SOURCES = ("trained", "user")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_TOL = 1e-9


class RecordError(UsageError):
    """A result record that is malformed or inconsistent: ``[source: ]field: reason``."""

    def __init__(self, field: str, reason: str, source=None):
        self.field, self.reason, self.source = field, reason, None if source is None else str(source)
        msg = f"{field}: {reason}" if field else reason
        super().__init__(f"{self.source}: {msg}" if self.source else msg)

    def with_source(self, source) -> "RecordError":
        return RecordError(self.field, self.reason, source)


@dataclass(frozen=True)
class Summary:
    """mean, std (population, ddof 0), min, max of per-pattern values (all None without values)."""

    mean: float | None
    std: float | None
    min: float | None
    max: float | None

    @classmethod
    def of(cls, values) -> "Summary":
        v = [float(x) for x in values]
        if not v:
            return cls(None, None, None, None)
        n = len(v)
        mean = math.fsum(v) / n
        std = math.sqrt(math.fsum((x - mean) ** 2 for x in v) / n) if n > 1 else 0.0
        return cls(mean, std, min(v), max(v))

    def to_json(self) -> dict:
        return {"mean": self.mean, "std": self.std, "min": self.min, "max": self.max}


@dataclass
class PatternResult:
    """One bit-error pattern (chip) or adversarial run: its index k, seed, error and robust error."""

    index: int
    seed: int | None
    err: float
    rerr: float
    info: dict = field(default_factory=dict)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# JSON fields in file order: (name, check, required); derived fields (rerr, n_patterns, per-pattern lists, seeds)
# are written by to_json and checked by from_json.
_STR, _OPT_STR, _INT, _OPT_INT, _FRAC, _OPT_NUM, _DICT, _ANY = "str", "str?", "int", "int?", "frac", "num?", \
    "dict", "any"
_FIELDS = (
    ("suite", _STR), ("dataset", _STR), ("eval_split", _STR), ("eval_split_rule", _OPT_STR), ("n_eval", _INT),
    ("model", _STR), ("model_options", _DICT), ("n_params", _INT), ("model_source", _STR), ("checkpoint", _OPT_STR),
    ("checkpoint_sha256", _OPT_STR), ("weights_sha256", _OPT_STR), ("defense", _STR), ("defense_name", _STR),
    ("defense_params", _DICT), ("bits", _INT), ("scheme", _OPT_STR), ("attack", _STR), ("attack_name", _STR),
    ("attack_params", _DICT), ("attack_kind", _OPT_STR), ("rate", _OPT_NUM), ("flips", _OPT_INT),
    ("clean_err", _FRAC), ("train_seed", _OPT_INT), ("version", _STR), ("git_rev", _OPT_STR),
    ("config_hash", _STR), ("inputs", _DICT), ("device", _OPT_STR), ("timings", _DICT), ("date", _STR),
    ("recipe", _DICT),
)
_OPTIONAL = {"eval_split_rule", "scheme", "attack_kind", "rate", "flips", "train_seed", "git_rev", "device",
             "defense_name", "attack_name", "attack_params", "timings", "inputs", "model_source", "checkpoint",
             "checkpoint_sha256", "weights_sha256", "recipe"}
_DEFAULTS = {"defense_name": "", "attack_name": "", "attack_params": {}, "timings": {}, "inputs": {},
             "model_source": "trained", "recipe": {}}


def record_digest(d: dict) -> str:
    """``sha256:<hex>`` of a record's JSON object without its ``digest`` field: the canonical JSON (sorted keys,
    no spaces) of the object exactly as a JSON file holds it (tuples as lists, keys as strings)."""
    body = json.loads(json.dumps({k: v for k, v in d.items() if k != "digest"}, default=str))
    return "sha256:" + sha256_bytes(canonical_json(body, allow_nan=True))


@dataclass
class ResultRecord:
    """One evaluated (defense, attack) cell. ``patterns`` holds the per-pattern results in index order."""

    suite: str
    dataset: str
    eval_split: str
    n_eval: int
    model: str
    model_options: dict
    n_params: int
    defense: str
    defense_params: dict
    bits: int
    attack: str
    clean_err: float
    version: str
    config_hash: str
    date: str
    patterns: list = field(default_factory=list)
    inputs: dict = field(default_factory=dict)  # {role: "sha256:..."} of the input files behind the numbers
    defense_name: str = ""
    attack_name: str = ""
    attack_params: dict = field(default_factory=dict)
    attack_kind: str | None = None
    eval_split_rule: str | None = None
    scheme: str | None = None
    rate: float | None = None
    flips: int | None = None
    train_seed: int | None = None
    git_rev: str | None = None
    device: str | None = None
    timings: dict = field(default_factory=dict)
    recipe: dict = field(default_factory=dict)  # training recipe; "deviations": paper elements turned off
    trace: Any = None
    world_size: int | None = None
    model_source: str = "trained"         # one of MODEL_SOURCES
    checkpoint: str | None = None         # the checkpoint file of a supplied model, as given
    checkpoint_sha256: str | None = None  # SHA-256 of that file's bytes
    weights_sha256: str | None = None     # digest of the evaluated float weights (state dict; docs/formats.md)
    # where it came from (not part of the file)
    cached: bool = field(default=False, compare=False)
    path: str | None = field(default=None, compare=False)

    # -- derived -----------------------------------------------------------------------------------------------
    @property
    def format(self) -> str:
        return RECORD_FORMAT

    @property
    def n_patterns(self) -> int:
        return len(self.patterns)

    @property
    def per_pattern_err(self) -> list[float]:
        return [p.err for p in self.patterns]

    @property
    def per_pattern_rerr(self) -> list[float]:
        return [p.rerr for p in self.patterns]

    @property
    def seeds(self) -> list[int] | None:
        s = [p.seed for p in self.patterns]
        return s if s and all(x is not None for x in s) else None

    @property
    def rerr(self) -> Summary:
        """RErr over patterns, computed from the per-pattern values."""
        return Summary.of(self.per_pattern_rerr)

    @property
    def err(self) -> Summary:
        return Summary.of(self.per_pattern_err)

    # -- JSON --------------------------------------------------------------------------------------------------
    def to_json(self) -> dict:
        """The file's JSON object (docs/formats.md), summary and content digest included."""
        d: dict = {"format": RECORD_FORMAT}
        for name, _ in _FIELDS:
            d[name] = getattr(self, name)
            if name == "clean_err":
                d["per_pattern_err"] = self.per_pattern_err
                d["per_pattern_rerr"] = self.per_pattern_rerr
                d["rerr"] = self.rerr.to_json()
                d["seeds"] = self.seeds
                d["n_patterns"] = self.n_patterns
        if self.world_size is not None:
            d["world_size"] = self.world_size
        if self.trace is not None:
            d["trace"] = self.trace
        d["digest"] = record_digest(d)
        return d

    @classmethod
    def from_json(cls, d: Any, source=None) -> "ResultRecord":
        """Validate a parsed record file; :class:`RecordError` names the field and the problem."""
        try:
            return cls._from_json(d)
        except RecordError as e:
            raise e.with_source(source) if source is not None else e

    @classmethod
    def _from_json(cls, d: Any) -> "ResultRecord":
        if not isinstance(d, dict):
            raise RecordError("", f"expected a JSON object, got {type(d).__name__}")
        if d.get("format") != RECORD_FORMAT:
            raise RecordError("format", f"expected {json.dumps(RECORD_FORMAT)} (a result record), got "
                                        f"{json.dumps(d.get('format'), default=str)}")
        kw: dict = {}
        for name, kind in _FIELDS:
            if name not in d:
                if name in _OPTIONAL:
                    kw[name] = _DEFAULTS.get(name)
                    continue
                raise RecordError(name, "missing")
            v = d[name]
            ok = {_STR: lambda: isinstance(v, str) and bool(v), _OPT_STR: lambda: v is None or isinstance(v, str),
                  _INT: lambda: _is_int(v), _OPT_INT: lambda: v is None or _is_int(v),
                  _FRAC: lambda: _is_num(v) and 0 <= v <= 1,
                  _OPT_NUM: lambda: v is None or (_is_num(v) and 0 <= v <= 1),
                  _DICT: lambda: isinstance(v, dict), _ANY: lambda: True}[kind]()
            if not ok:
                want = {_STR: "a non-empty string", _OPT_STR: "a string or null", _INT: "an integer",
                        _OPT_INT: "an integer or null", _FRAC: "a number in [0, 1]",
                        _OPT_NUM: "a number in [0, 1] or null", _DICT: "an object", _ANY: "a value"}[kind]
                raise RecordError(name, f"expected {want}, got {v!r}"[:200])
            kw[name] = v
        if kw["model_source"] not in MODEL_SOURCES:
            raise RecordError("model_source", f"expected one of {', '.join(MODEL_SOURCES)}, got "
                                              f"{kw['model_source']!r}"[:200])
        for key in ("checkpoint_sha256", "weights_sha256"):
            if kw[key] is not None and not _SHA256.fullmatch(kw[key]):
                raise RecordError(key, f"expected 64 lowercase hex digits (SHA-256) or null, got {kw[key]!r}"[:200])
        errs, rerrs, seeds = d.get("per_pattern_err"), d.get("per_pattern_rerr"), d.get("seeds")
        for key, vals in (("per_pattern_err", errs), ("per_pattern_rerr", rerrs)):
            if not isinstance(vals, list) or not all(_is_num(x) and 0 <= x <= 1 for x in vals):
                raise RecordError(key, "expected a list of numbers in [0, 1]")
        if len(errs) != len(rerrs):
            raise RecordError("per_pattern_err", f"{len(errs)} values but per_pattern_rerr has {len(rerrs)}")
        if seeds is not None and (not isinstance(seeds, list) or len(seeds) != len(rerrs)
                                  or not all(_is_int(s) for s in seeds)):
            raise RecordError("seeds", "expected null or one integer seed per pattern")
        for e, r in zip(errs, rerrs):
            if r < e - _TOL or r < kw["clean_err"] - _TOL:
                raise RecordError("per_pattern_rerr", "a robust error is below its pattern's error or the clean "
                                                      "error (RErr counts clean OR perturbed mistakes)")
        kw["patterns"] = [PatternResult(index=k, seed=None if seeds is None else seeds[k], err=e, rerr=r)
                          for k, (e, r) in enumerate(zip(errs, rerrs))]
        kw["trace"] = d.get("trace")
        kw["world_size"] = d.get("world_size")
        rec = cls(**kw)
        if d.get("n_patterns") != rec.n_patterns:
            raise RecordError("n_patterns", f"{d.get('n_patterns')!r} but {rec.n_patterns} per-pattern values")
        stored = d.get("rerr")
        if not isinstance(stored, dict):
            raise RecordError("rerr", "expected an object {mean, std, min, max}")
        mine = rec.rerr.to_json()
        for k, v in mine.items():
            s = stored.get(k)
            if not (_is_num(s) and 0 <= s <= 1):
                raise RecordError(f"rerr.{k}", f"expected a number in [0, 1], got {json.dumps(s)}")
            if v is None or abs(s - v) > _TOL:
                raise RecordError(f"rerr.{k}", f"{s!r} does not match the per-pattern values ({v!r}): the record "
                                               "was edited or damaged")
        extra = set(d) - {n for n, _ in _FIELDS} - {"format", "per_pattern_err", "per_pattern_rerr", "rerr",
                                                     "seeds", "n_patterns", "trace", "world_size", "digest"}
        if extra:
            raise RecordError(sorted(extra)[0], "unknown field")
        digest = d.get("digest")
        if not isinstance(digest, str):
            raise RecordError("digest", f"missing (expected the record's content digest \"sha256:...\"), got "
                                        f"{json.dumps(digest, default=str)}")
        if digest != record_digest(d):
            raise RecordError("digest", "does not match the record's content: the record was edited or damaged")
        return rec


_RECORD_FIELD_NAMES = {f.name for f in fields(ResultRecord)}
