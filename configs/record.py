"""The result record: what one (suite, defense, attack) cell measured, one JSON file per cell.

:class:`ResultRecord` is the one type for it: the harness builds it, tables print it, the leaderboard turns it into
entries. Per-pattern results are stored once (:class:`PatternResult`, one per bit-error pattern / chip); the
summary (mean, std, min, max of RErr) is always computed from them, never stored on its own authority: a record
read from disk whose stored summary does not match its per-pattern values is refused. Every file carries a content
digest (``digest``: SHA-256 of the canonical JSON of all its other fields, :func:`record_digest`) verified on load:
an edited or damaged record is refused, never reused or published. Errors are fractions in [0, 1]. Field
reference: docs/formats.md.

Adversarial attacks with a flip-count sweep (BFA, T-BFA, the budgeted attack) have one pattern per trial and add,
per trial, ``flips_used``, ``stop_reason``, ``flips_to_target`` and the ``curve`` (evaluation error after each flip
budget), plus the record's ``target``; :func:`_curve_from_json` checks them against each other and the
per-pattern errors. Records without them (random attacks) do not carry these fields.
Costs (every record): ``memory_overhead`` (check bits / data bits of the protected memory; 0 without protection),
``decode_ms`` (mean time to decode one pattern's memory, ms) and ``time_overhead`` (decode time / the time of
loading and evaluating one pattern). A protected defense (``rquant+secded``) adds ``protection`` (the stages and
their check bits) and ``per_pattern_protection`` (per pattern: the decoder's counts, :data:`PROTECTION_COUNTS`);
:func:`protection_summary` aggregates them. Older records without these fields read as unprotected.
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
           "record_digest", "CURVE_FIELDS", "STOP_REASONS", "CURVE_METRICS", "flips_summary", "format_flips",
           "PROTECTION_COUNTS", "protection_summary"]

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
    """One bit-error pattern (chip) or adversarial trial: its index k, seed, error and robust error.

    Adversarial trials with a curve also hold ``flips_used`` (bits flipped), ``stop_reason`` (why the search
    stopped), ``curve`` (one point per flip budget n of the sweep: ``{flips: n, flips_used, err, rerr, loss, acc}``
    and the attack's own metrics, e.g. ``asr``; the state with at most n flips) and ``flips_to_target`` (the first
    flip count at which the evaluation metric reached the record's target; None: not reached).

    ``nonfinite``: evaluation inputs whose logits held NaN or inf under this pattern (counted as errors);
    for a protected memory ``protection``, the decoder's counts (``flips``, ``residual``, ``failed``,
    ``<stage>.<count>``)."""

    index: int
    seed: int | None
    err: float
    rerr: float
    info: dict = field(default_factory=dict)
    flips_used: int | None = None
    stop_reason: str | None = None
    curve: list | None = None
    flips_to_target: int | None = None
    nonfinite: int = 0
    protection: dict | None = None


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# JSON fields in file order: (name, check, required); derived fields (rerr, n_patterns, per-pattern lists, seeds)
# are written by to_json and checked by from_json.
_STR, _OPT_STR, _INT, _OPT_INT, _FRAC, _OPT_NUM, _DICT, _ANY = "str", "str?", "int", "int?", "frac", "num?", \
    "dict", "any"
_NONNEG, _OPT_DICT = "num>=0", "dict?"
_FIELDS = (
    ("suite", _STR), ("dataset", _STR), ("eval_split", _STR), ("eval_split_rule", _OPT_STR), ("n_eval", _INT),
    ("model", _STR), ("model_options", _DICT), ("n_params", _INT), ("model_source", _STR), ("checkpoint", _OPT_STR),
    ("checkpoint_sha256", _OPT_STR), ("weights_sha256", _OPT_STR), ("defense", _STR), ("defense_name", _STR),
    ("defense_params", _DICT), ("bits", _INT), ("scheme", _OPT_STR), ("attack", _STR), ("attack_name", _STR),
    ("attack_params", _DICT), ("attack_kind", _OPT_STR), ("rate", _OPT_NUM), ("flips", _OPT_INT),
    ("clean_err", _FRAC), ("train_seed", _OPT_INT), ("version", _STR), ("git_rev", _OPT_STR),
    ("config_hash", _STR), ("inputs", _DICT), ("device", _OPT_STR), ("timings", _DICT), ("date", _STR),
    ("recipe", _DICT), ("memory_overhead", _NONNEG), ("decode_ms", _NONNEG), ("time_overhead", _NONNEG),
    ("protection", _OPT_DICT),
)
_OPTIONAL = {"eval_split_rule", "scheme", "attack_kind", "rate", "flips", "train_seed", "git_rev", "device",
             "defense_name", "attack_name", "attack_params", "timings", "inputs", "model_source", "checkpoint",
             "checkpoint_sha256", "weights_sha256", "recipe", "memory_overhead", "decode_ms", "time_overhead",
             "protection"}
_DEFAULTS = {"defense_name": "", "attack_name": "", "attack_params": {}, "timings": {}, "inputs": {},
             "model_source": "trained", "recipe": {}, "memory_overhead": 0.0, "decode_ms": 0.0,
             "time_overhead": 0.0}
# per-pattern counts of a protected memory: bits flipped in the image, data bits wrong after decoding, 1 if the
# inference failed (policy 'fail'); stages add '<stage>.<count>' (e.g. secded.corrected, radar.detected_flips)
PROTECTION_COUNTS = ("flips", "residual", "failed")
_PROTECTION_KEYS = ("spec", "data_bits", "check_bits", "image_bits", "memory_overhead", "stages")


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
    target: dict | None = None      # curves: {'metric': 'err' | 'asr', 'value': fraction} of flips_to_target
    clean_nonfinite: int | None = None    # inputs with non-finite logits under the clean memory (None: not measured)
    memory_overhead: float = 0.0          # check bits / data bits (0: no protection)
    decode_ms: float = 0.0                # mean decode time per pattern, ms (0: nothing to decode)
    time_overhead: float = 0.0            # decode time / time to load and evaluate one pattern
    protection: dict | None = None        # the protection stages (docs/formats.md); None: unprotected
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

    @property
    def has_curve(self) -> bool:
        """An adversarial record with per-trial curves (flips_used, stop_reason, curve, flips_to_target)."""
        return bool(self.patterns) and all(p.curve is not None for p in self.patterns)

    @property
    def per_pattern_nonfinite(self) -> list[int]:
        return [p.nonfinite for p in self.patterns]

    @property
    def nonfinite(self) -> dict | None:
        """``{"clean", "per_pattern", "patterns"}``: inputs with non-finite logits (NaN/inf: counted as errors)
        under the clean memory and under each pattern, and the number of patterns with any (None: not measured,
        records written before the field existed)."""
        if self.clean_nonfinite is None:
            return None
        pp = self.per_pattern_nonfinite
        return {"clean": self.clean_nonfinite, "per_pattern": pp, "patterns": sum(1 for v in pp if v > 0)}

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
        if self.has_curve:
            d.update(_curve_to_json(self))
        if self.clean_nonfinite is not None:
            d["nonfinite"] = self.nonfinite
        if self.protection is not None:
            d["per_pattern_protection"] = [p.protection for p in self.patterns]
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
                  _NONNEG: lambda: _is_num(v) and v >= 0, _OPT_DICT: lambda: v is None or isinstance(v, dict),
                  _DICT: lambda: isinstance(v, dict), _ANY: lambda: True}[kind]()
            if not ok:
                want = {_STR: "a non-empty string", _OPT_STR: "a string or null", _INT: "an integer",
                        _OPT_INT: "an integer or null", _FRAC: "a number in [0, 1]",
                        _OPT_NUM: "a number in [0, 1] or null", _NONNEG: "a number >= 0",
                        _OPT_DICT: "an object or null", _DICT: "an object", _ANY: "a value"}[kind]
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
        nf = d.get("nonfinite")
        if nf is not None:
            n = kw["n_eval"]
            pp = nf.get("per_pattern") if isinstance(nf, dict) else None
            if (not isinstance(nf, dict) or set(nf) != {"clean", "per_pattern", "patterns"} or not _is_int(nf["clean"])
                    or not 0 <= nf["clean"] <= n or not isinstance(pp, list) or len(pp) != len(errs)
                    or not all(_is_int(v) and 0 <= v <= n for v in pp)):
                raise RecordError("nonfinite", f"expected {{clean, per_pattern, patterns}} with counts in [0, {n}] "
                                               "and one per pattern"[:200])
            if nf["patterns"] != sum(1 for v in pp if v > 0):
                raise RecordError("nonfinite.patterns", f"{nf['patterns']!r} but {sum(1 for v in pp if v > 0)} "
                                                        "per-pattern counts are > 0")
            for p, v in zip(kw["patterns"], pp):
                p.nonfinite = v
            kw["clean_nonfinite"] = nf["clean"]
        _protection_from_json(d, kw)
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
        _curve_from_json(d, rec)
        extra = set(d) - {n for n, _ in _FIELDS} - {"format", "per_pattern_err", "per_pattern_rerr", "rerr",
                                                     "seeds", "n_patterns", "trace", "world_size", "digest",
                                                     "nonfinite",
                                                     "per_pattern_protection"} - set(CURVE_FIELDS)
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

# -- adversarial curves ---------------------------------------------------------------------------------------------
CURVE_FIELDS = ("flips_used", "stop_reason", "flips_to_target", "target", "curve")
STOP_REASONS = ("budget", "chance", "collapse", "success", "no_candidate", "no_gain")   # the built-in attacks'

CURVE_METRICS = ("err", "asr")
_POINT_FRACS = ("err", "rerr", "acc", "asr", "other_err")


def _curve_to_json(rec: "ResultRecord") -> dict:
    return {"flips_used": [p.flips_used for p in rec.patterns], "stop_reason": [p.stop_reason for p in rec.patterns],
            "flips_to_target": [p.flips_to_target for p in rec.patterns], "target": rec.target,
            "curve": [p.curve for p in rec.patterns]}


def _curve_from_json(d: dict, rec: "ResultRecord") -> None:
    """Read and check the curve fields (all or none) into ``rec`` and its patterns."""
    present = [k for k in CURVE_FIELDS if k in d]
    if not present:
        return
    if len(present) != len(CURVE_FIELDS):
        missing = [k for k in CURVE_FIELDS if k not in d][0]
        raise RecordError(missing, f"missing (a record with {present[0]!r} needs all of {', '.join(CURVE_FIELDS)})")
    n = rec.n_patterns
    target = d["target"]
    if target is not None and not (isinstance(target, dict) and set(target) == {"metric", "value"}
                                   and target["metric"] in CURVE_METRICS and _is_num(target["value"])
                                   and 0 <= target["value"] <= 1):
        raise RecordError("target", f"expected null or {{metric: one of {list(CURVE_METRICS)}, value: a number in "
                                    f"[0, 1]}}, got {json.dumps(target, default=str)[:120]}")
    for key in ("flips_used", "stop_reason", "flips_to_target", "curve"):
        if not isinstance(d[key], list) or len(d[key]) != n:
            raise RecordError(key, f"expected a list with one value per pattern ({n})")
    sweep = None
    for k, (pat, used, stop, ftt, curve) in enumerate(zip(rec.patterns, d["flips_used"], d["stop_reason"],
                                                          d["flips_to_target"], d["curve"])):
        if not (_is_int(used) and used >= 0):
            raise RecordError(f"flips_used[{k}]", f"expected an integer >= 0, got {used!r}")
        if not (isinstance(stop, str) and re.fullmatch(r"[a-z][a-z0-9_]*", stop)):
            raise RecordError(f"stop_reason[{k}]", f"expected an identifier such as one of {list(STOP_REASONS)}, got "
                                                   f"{stop!r}")
        if ftt is not None and target is None:
            raise RecordError(f"flips_to_target[{k}]", f"{ftt!r} but the record has no target")
        if ftt is not None and not (_is_int(ftt) and 0 <= ftt <= used):
            raise RecordError(f"flips_to_target[{k}]", f"expected null or an integer in [0, flips_used = {used}], "
                                                       f"got {ftt!r}")
        where = f"curve[{k}]"
        if not isinstance(curve, list):
            raise RecordError(where, "expected a list of points")
        prev_n = prev_used = -1
        for i, pt in enumerate(curve):
            w = f"{where}[{i}]"
            if not isinstance(pt, dict) or not {"flips", "flips_used", "err", "rerr", "loss", "acc"} <= set(pt):
                raise RecordError(w, "expected {flips, flips_used, err, rerr, loss, acc, ...}")
            unknown = set(pt) - {"flips", "flips_used", "loss"} - set(_POINT_FRACS)
            if unknown:
                raise RecordError(f"{w}.{sorted(unknown)[0]}", "unknown field")
            if not (_is_int(pt["flips"]) and pt["flips"] > prev_n):
                raise RecordError(f"{w}.flips", "expected integer flip budgets in increasing order")
            if not (_is_int(pt["flips_used"]) and prev_used <= pt["flips_used"] <= min(pt["flips"], used)):
                raise RecordError(f"{w}.flips_used", f"expected an integer in [previous point's, min(flips, "
                                                     f"flips_used = {used})], got {pt['flips_used']!r}")
            if not _is_num(pt["loss"]):
                raise RecordError(f"{w}.loss", f"expected a finite number, got {pt['loss']!r}")
            for key in _POINT_FRACS:
                if key in pt and not (_is_num(pt[key]) and 0 <= pt[key] <= 1):
                    raise RecordError(f"{w}.{key}", f"expected a number in [0, 1], got {pt[key]!r}")
            if pt["rerr"] < max(pt["err"], rec.clean_err) - _TOL:
                raise RecordError(f"{w}.rerr", "below its error or the clean error (RErr counts clean OR perturbed "
                                               "mistakes)")
            if target is not None:
                m = target["metric"]
                if m not in pt:
                    raise RecordError(f"{w}.{m}", "missing: the target's metric")
                reached = pt[m] >= target["value"] - 1e-12
                if reached and (ftt is None or ftt > pt["flips_used"]):
                    raise RecordError(f"flips_to_target[{k}]", f"{ftt!r} but the state at {pt['flips_used']} flips "
                                                               f"already reached the target ({m} {pt[m]!r})")
                if not reached and ftt == pt["flips_used"]:
                    raise RecordError(f"flips_to_target[{k}]", f"{ftt!r} but the state at {ftt} flips has {m} "
                                                               f"{pt[m]!r}, below the target")
            prev_n, prev_used = pt["flips"], pt["flips_used"]
        if curve:
            last = curve[-1]
            if last["flips_used"] != used or abs(last["err"] - pat.err) > _TOL or abs(last["rerr"] - pat.rerr) > _TOL:
                raise RecordError(f"{where}[{len(curve) - 1}]", "the last point is not the trial's final state "
                                                                "(flips_used, per_pattern_err, per_pattern_rerr)")
        flips = [pt["flips"] for pt in curve]
        if sweep is None:
            sweep = flips
        elif flips != sweep:
            raise RecordError(f"{where}", f"flip budgets {flips} differ from curve[0]'s {sweep}")
        pat.flips_used, pat.stop_reason, pat.flips_to_target, pat.curve = used, stop, ftt, curve
    rec.target = None if target is None else dict(target)


def flips_summary(flips_to_target: list) -> dict:
    """Flips-to-target over trials (None: the trial never reached the target, a failure that ranks above any
    number of flips): ``{median, min, max, reached, trials}``; ``median`` over all trials, None where it falls on a
    failure; ``min`` / ``max`` over the trials that reached it (None if none did)."""
    vals = sorted((math.inf if f is None else float(f)) for f in flips_to_target)
    n = len(vals)
    hit = [v for v in vals if v != math.inf]
    med = None
    if n:
        m = vals[n // 2] if n % 2 else (vals[n // 2 - 1] + vals[n // 2]) / 2
        med = None if m == math.inf else m
    return {"median": med, "min": hit[0] if hit else None, "max": hit[-1] if hit else None, "reached": len(hit),
            "trials": n}


def format_flips(s: dict) -> str:
    """``'17 [13, 22]'`` (median [min, max]); ``'(k/T)'`` when only k of T trials reached the target (the median
    counts the others as failures: ``'–'`` where it falls on one)."""
    if not s["trials"]:
        return "–"

    def v(x):
        return "–" if x is None else f"{x:g}"

    out = v(s["median"])
    if s["trials"] > 1 and s["reached"]:
        out += f" [{v(s['min'])}, {v(s['max'])}]"
    return out if s["reached"] == s["trials"] else f"{out} ({s['reached']}/{s['trials']})"

def _protection_from_json(d: dict, kw: dict) -> None:
    """Check ``protection`` / ``per_pattern_protection`` against each other and the per-pattern errors, and attach
    the counts to ``kw['patterns']``."""
    prot, counts = kw.get("protection"), d.get("per_pattern_protection")
    if prot is None:
        if counts is not None:
            raise RecordError("per_pattern_protection", "present but the record has no protection")
        if kw["memory_overhead"] != 0:
            raise RecordError("memory_overhead", f"{kw['memory_overhead']!r} but the record has no protection")
        return
    missing = [k for k in _PROTECTION_KEYS if k not in prot]
    if missing:
        raise RecordError(f"protection.{missing[0]}", "missing")
    if not isinstance(prot["spec"], str) or not prot["spec"]:
        raise RecordError("protection.spec", f"expected a non-empty string, got {prot['spec']!r}"[:200])
    for k in ("data_bits", "check_bits", "image_bits"):
        if not (_is_int(prot[k]) and prot[k] >= 0):
            raise RecordError(f"protection.{k}", f"expected an integer >= 0, got {prot[k]!r}"[:200])
    if not isinstance(prot["stages"], list) or not prot["stages"] or not all(isinstance(s, dict) for s in
                                                                               prot["stages"]):
        raise RecordError("protection.stages", "expected a non-empty list of objects")
    want = prot["check_bits"] / prot["data_bits"] if prot["data_bits"] else 0.0
    for key, v in (("protection.memory_overhead", prot["memory_overhead"]), ("memory_overhead",
                                                                               kw["memory_overhead"])):
        if not _is_num(v) or abs(v - want) > _TOL:
            raise RecordError(key, f"{v!r} is not check_bits / data_bits ({want!r})")
    pats = kw["patterns"]
    if not isinstance(counts, list) or len(counts) != len(pats):
        raise RecordError("per_pattern_protection", f"expected a list with one object per pattern ({len(pats)})")
    for k, (c, p) in enumerate(zip(counts, pats)):
        if not isinstance(c, dict) or not set(PROTECTION_COUNTS) <= set(c) or not all(
                isinstance(key, str) and _is_int(v) and v >= 0 for key, v in c.items()):
            raise RecordError(f"per_pattern_protection[{k}]", "expected {flips, residual, failed, ...} with integer "
                                                              "counts >= 0")
        if c["failed"] not in (0, 1):
            raise RecordError(f"per_pattern_protection[{k}].failed", f"expected 0 or 1, got {c['failed']!r}")
        if c["failed"] and (p.err != 1 or p.rerr != 1):
            raise RecordError(f"per_pattern_protection[{k}].failed", "a failed inference counts every input as "
                                                                     "misclassified (err = rerr = 1)")
        p.protection = dict(c)


def protection_summary(rec: "ResultRecord") -> dict | None:
    """Per-pattern means of every count of a protected record, plus ``failed`` (patterns whose inference failed)
    and, with RADAR-style counts, ``detection`` (detected flips / flips over all patterns); None if unprotected."""
    if rec.protection is None:
        return None
    counts = [p.protection or {} for p in rec.patterns]
    keys = sorted({k for c in counts for k in c})
    n = max(1, len(counts))
    out = {k: sum(c.get(k, 0) for c in counts) / n for k in keys}
    out["failed"] = sum(c.get("failed", 0) for c in counts)
    for stage in {k.split(".", 1)[0] for k in keys if k.endswith(".detected_flips")}:
        flips = sum(c.get(f"{stage}.flips", 0) for c in counts)
        out[f"{stage}.detection"] = (sum(c.get(f"{stage}.detected_flips", 0) for c in counts) / flips) if flips \
            else None
    return out
