"""The result record: what one trained model measured under one attack, one JSON file per (cell, model).

:class:`ResultRecord` is the one type for it: the harness builds it, tables print it (grouped into cells across
models, :mod:`.cells`), the leaderboard projects it into entries. Its fields are declared once, in
:data:`RECORD_FIELDS` (:mod:`.schema`): serialization, validation, the entry projection, table cells and the field
table of docs/formats.md come from those declarations. Per-pattern values are the record; summaries are derived
from them and checked on every read; every file carries a content digest (``digest``: SHA-256 of the canonical JSON
of all its other fields, :func:`record_digest`). An edited or damaged record is refused, never reused or published.

File layout (``bitbench.result/3``)::

    {"format": "bitbench.result/3", <record- and model-level fields>,
     "clean":    {"err": 0.032, "nonfinite": 0, <plug-in metrics>},      # the clean memory's values
     "patterns": {"seed": [...], "err": [...], "rerr": [...], "nonfinite": [...], <plug-in metrics>,
                  "protection": [...] (protected memories)},             # one value per pattern (chip) or trial
     "trials":   {"flips_used": [...], "stop_reason": [...], "flips_to_target": [...], "curve": [...]},
                 # adversarial attacks with a flip sweep only
     "summary":  {"err": {mean, std, min, max}, "rerr": {...}, ...},    # derived from "patterns"
     "trace": ..., "digest": "sha256:..."}

Records of format ``/1`` and ``/2`` (bitbench 0.1-0.2) are refused with a message naming their version: the harness
recomputes them. Errors are fractions in [0, 1].
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields as dc_fields
from typing import Any

from .fileio import canonical_json, sha256_bytes
from .metrics import field_from_declaration
from .schema import (KINDS, Field, FieldSet, FormatError, Kind, is_int, is_num, list_of, optional,
                     show_value)

__all__ = ["RECORD_FORMAT", "MODEL_SOURCES", "RecordError", "Summary", "PatternResult", "ResultRecord",
           "record_digest", "RECORD_FIELDS", "CURVE_POINT_FIELDS", "STOP_REASONS", "CURVE_METRICS",
           "PROTECTION_COUNTS", "protection_summary", "OLD_FORMATS", "BUILTIN_PATTERN_FIELDS"]

RECORD_FORMAT = "bitbench.result/3"
OLD_FORMATS = {"bitbench.result/1": "bitbench 0.1", "bitbench.result/2": "bitbench 0.1-0.2"}
# where the evaluated weights came from: trained by this benchmark with the defense's recipe (now, from its cache,
# or a leaderboard entry's checkpoint), or supplied by the user (the defense spec names only the storage format)
MODEL_SOURCES = ("trained", "user")
STOP_REASONS = ("budget", "target", "chance", "collapse", "success", "no_candidate", "no_gain")  # the built-ins'
CURVE_METRICS = ("err", "asr")
# per-pattern counts every protected memory reports (its stages declare their own: ``protection.stages[i].counts``)
PROTECTION_COUNTS = ("flips", "residual", "failed")
_TOL = 1e-9

RecordError = FormatError  # the one format error (``[source: ]field: reason``)


def _choice(*values) -> Kind:
    return Kind("|".join(values), lambda v: v in values, "one of " + ", ".join(json.dumps(x) for x in values))


_bits = Kind("bits", lambda v: is_int(v) and 1 <= v <= 32, "an integer in [1, 32]")
_target = Kind("target", lambda v: v is None or (isinstance(v, dict) and set(v) == {"metric", "value"}
                                                 and v["metric"] in CURVE_METRICS and KINDS["frac"].check(v["value"])),
               f"null or {{metric: one of {list(CURVE_METRICS)}, value: a number in [0, 1]}}")

# The declared fields, in file order. Levels: record (same for every model of a cell), model (one per trained model),
# pattern (one per chip / trial), trial (adversarial trials with a flip sweep).
RECORD_FIELDS = FieldSet([
    Field("suite", "str", "record", "suite name (`default`, `mnist`, `cifar10`, ...)"),
    Field("dataset", "str", "record", "dataset name (`mnist5k`, `cifar10`, `text`, ...)"),
    Field("task", "ident", "record", "what a prediction is: `classification`, or `next_token` (a causal language "
          "model's next-token prediction; errors count tokens)", default="classification"),
    Field("eval_split", "str", "record", "evaluation inputs, `test[0:N]`: the first N inputs of the test split"),
    Field("eval_split_rule", optional(KINDS["text"]), "record", "how the dataset defines its test split",
          default=None),
    Field("n_eval", "posint", "record", "evaluation inputs (images, text windows)"),
    Field("n_examples", optional(KINDS["posint"]), "record", "evaluated examples that errors are fractions of "
          "(tokens of a language model; null: `n_eval`)", default=None),
    Field("model", "str", "record", "architecture (`lenet`, `simplenet`, a user builder, ...)", entry="entry"),
    Field("model_options", "dict", "record", "options of the model builder, e.g. `{\"norm\": \"rgn\"}`",
          entry="entry"),
    Field("n_params", "posint", "record", "words in the quantized memory (parameters)", entry="entry"),
    Field("model_source", _choice(*MODEL_SOURCES), "record", "`trained`: by this benchmark with the defense's "
          "recipe; `user`: the user's own weights, the defense spec then names only the storage format",
          default="trained"),
    Field("checkpoint", optional(KINDS["text"]), "record", "the weights file the model was loaded from, as given",
          default=None),
    Field("checkpoint_sha256", optional(KINDS["sha256"]), "record", "SHA-256 of that file's bytes", default=None),
    Field("defense", "str", "record", "canonical defense spec (`randbet:p=0.05`, `rquant+secded`)", entry="entry"),
    Field("defense_name", "str", "record", "registry name of the defense", entry="entry"),
    Field("defense_params", "dict", "record", "every defense parameter, defaults filled in", entry="entry"),
    Field("bits", _bits, "record", "bits per word of the memory", entry="entry", title="Bits", fmt="int"),
    Field("scheme", optional(KINDS["text"]), "record", "name of the memory format", default=None),
    Field("protection", optional(KINDS["dict"]), "record", "protected memories: `{spec, data_bits, check_bits, "
          "image_bits, memory_overhead, stages: [{name, spec, counts: {count: doc}, ...}]}`", default=None),
    Field("attack", "str", "record", "canonical attack spec (`random_p0.01`, `bfa_n100`)"),
    Field("attack_name", "str", "record", "registry name of the attack"),
    Field("attack_params", "dict", "record", "every attack parameter"),
    Field("attack_kind", optional(KINDS["text"]), "record", "`random` or `adversarial`", default=None),
    Field("rate", optional(KINDS["frac"]), "record", "bit error rate of a random attack (a fraction)",
          default=None),
    Field("flips", optional(KINDS["count"]), "record", "bit-flip budget of an adversarial attack", default=None),
    Field("target", _target, "record", "curves: `{metric, value}` that `flips_to_target` measures (null: none)",
          default=None),
    Field("metrics", "dict", "record", "declarations of the plug-in metrics the record carries: `{name: {kind, "
          "title, fmt, lower_is_better, clean, doc}}`", default={}),
    Field("clean_baseline", optional(KINDS["dict"]), "record", "what the clean values are measured on when it is "
          "not the clean quantized model, e.g. `{\"activations\": {...}}` (activations quantized, no errors); "
          "null: the clean quantized model", default=None),
    Field("version", "str", "record", "package version that produced the numbers"),
    Field("git_rev", optional(KINDS["text"]), "record", "git revision of the code, if known", default=None),
    Field("device", optional(KINDS["text"]), "record", "where it ran, e.g. `cpu (x86_64, 2 threads)`",
          default=None),
    Field("date", "str", "record", "ISO 8601 UTC"),
    Field("recipe", "dict", "record", "the training recipe; `deviations`: elements of the paper's recipe turned "
          "off, in words", default={}),
    Field("world_size", optional(KINDS["posint"]), "record", "processes of a torchrun evaluation", default=None),
    # -- per trained model
    Field("train_seed", optional(KINDS["int"]), "model", "training seed of the model (null: not trained here)",
          default=None),
    Field("weights_sha256", optional(KINDS["sha256"]), "model", "digest of the evaluated float weights: SHA-256 over "
          "the state dict in sorted key order, per tensor its name, NUL, dtype, NUL, shape, NUL, then its raw bytes in "
          "C order (`bitbench.user_model.tensor_digest`); equal digests: bit-identical weights", default=None),
    Field("config_hash", "str", "model", "hash of everything behind the numbers (see Configuration hashes): a record "
          "is reused only under the same hash"),
    Field("inputs", "dict", "model", "`{role: \"sha256:...\"}`: content digests of the inputs behind the numbers: "
          "`data.train`, `data.eval`, `data.attack`, `attack.<param>` (files an attack names, e.g. an error map), "
          "`weights` (the deployed memory)", default={}),
    Field("timings", "dict", "model", "seconds: `train`, `attack_eval`, `total`", default={}),
    Field("memory_overhead", "nonneg", "model", "check bits / data bits of a protected memory (0: none)",
          default=0.0, title="Mem +%", fmt="pct", entry="entry", show="any"),
    Field("decode_ms", "nonneg", "model", "mean time to decode one pattern's protected image (ms)", default=0.0,
          title="Decode ms", fmt="ms", entry="result", show="any"),
    Field("time_overhead", "nonneg", "model", "decode time / time to load and evaluate one pattern", default=0.0),
    # -- per pattern (chip) or trial: the "patterns" table; "clean" holds the clean memory's value where `clean`
    Field("seed", optional(KINDS["int"]), "pattern", "pattern seed (base_seed + k), or the trial's batch seed",
          default=None),
    Field("err", "frac", "pattern", "error of the perturbed memory (the clean memory's: `clean.err`)",
          title="Err %", fmt="pct", clean=True, summary=True, lower_is_better=True),
    Field("rerr", "frac", "pattern", "robust error: examples wrong on the clean OR the perturbed memory",
          title="RErr %", fmt="pct", summary=True, entry="result", lower_is_better=True),
    Field("nonfinite", "count", "pattern", "evaluation examples whose logits held NaN or inf (counted as errors)",
          title="Non-finite patterns", fmt="int", clean=True, entry="result", show="any", agg="any"),
    Field("masked", "count", "pattern", "outcome: examples whose prediction equals the clean memory's (finite "
          "outputs, no detected error)", title="Masked", fmt="num", entry="result", show="request"),
    Field("sdc", "count", "pattern", "outcome: silent data corruption, examples whose prediction changed with "
          "finite outputs and no detected error", title="SDC", fmt="num", entry="result", show="request"),
    Field("due", "count", "pattern", "outcome: detected or unrecoverable, examples with non-finite outputs, or every "
          "example of a pattern whose decoder reported a detected, uncorrectable error; masked + sdc + due = the "
          "evaluated examples", title="DUE", fmt="num", entry="result", show="request"),
    Field("protection", optional(KINDS["dict"]), "pattern", "protected memories: the decoder's counts "
          "(`flips`, `residual`, `failed`, `<stage>.<count>` as the stage declares)", default=None),
    # -- per trial of an adversarial attack with a flip sweep: the "trials" table
    Field("flips_used", "count", "trial", "bits flipped (= Hamming distance to the clean memory)", entry="result"),
    Field("stop_reason", "ident", "trial", "why the search stopped: `budget`, `target` (the evaluation reached the "
          "target), `chance`, `collapse`, `success`, `no_candidate`, `no_gain`"),
    Field("flips_to_target", optional(KINDS["count"]), "trial", "first flip count at which the evaluation metric "
          "reached `target`; null: not within the trial's budget (right-censored: > flips_used)",
          undefined="the attack has no target", title="Flips to target", fmt="flips", entry="result",
          lower_is_better=False),
    Field("curve", list_of(KINDS["dict"]), "trial", "one point per flip budget n of the sweep: the state with at "
          "most n flips (`CURVE_POINT_FIELDS`)", entry="result"),
])

CURVE_POINT_FIELDS = FieldSet([
    Field("flips", "posint", "trial", "the flip budget n of the point"),
    Field("flips_used", "count", "trial", "bits flipped in that state (<= n)"),
    Field("err", "frac", "trial", "evaluation error", title="Err %", fmt="pct"),
    Field("rerr", "frac", "trial", "evaluation robust error", title="RErr %", fmt="pct"),
    Field("loss", "num", "trial", "the attacker's loss on its batch"),
    Field("acc", "frac", "trial", "the attacker's accuracy on its batch"),
    Field("asr", "frac", "trial", "T-BFA: share of the evaluation inputs to attack that go to the target class",
          default=None, title="ASR %", fmt="pct", undefined="untargeted attacks"),
    Field("asr_all", "frac", "trial", "T-BFA: share of all evaluation inputs predicted as the target class (the "
          "reference's denominator)", default=None, title="ASR (all) %", fmt="pct",
          undefined="untargeted attacks"),
    Field("other_err", "frac", "trial", "T-BFA with a source class: error on the other classes", default=None,
          title="Other Err %", fmt="pct", undefined="attacks without a source class"),
])

BUILTIN_PATTERN_FIELDS = tuple(f.name for f in RECORD_FIELDS.at("pattern"))
_HEAD = [f for f in RECORD_FIELDS if f.level in ("record", "model")]
_PATTERN = RECORD_FIELDS.at("pattern")
_TRIAL = RECORD_FIELDS.at("trial")
_TOP_KEYS = {"format", "clean", "patterns", "trials", "summary", "trace", "digest"} | {f.name for f in _HEAD}


def record_digest(d: dict) -> str:
    """``sha256:<hex>`` of a record's JSON object without its ``digest`` field: the canonical JSON (sorted keys,
    no spaces) of the object exactly as a JSON file holds it (tuples as lists, keys as strings)."""
    body = json.loads(json.dumps({k: v for k, v in d.items() if k != "digest"}, default=str))
    return "sha256:" + sha256_bytes(canonical_json(body, allow_nan=True))


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

    ``values``: the plug-in metrics' values (``{name: value}``). ``nonfinite``: evaluation examples whose logits held
    NaN or inf. ``protection``: a protected memory's decoder counts. Adversarial trials with a curve also hold
    ``flips_used``, ``stop_reason``, ``curve`` (one point per flip budget of the sweep, :data:`CURVE_POINT_FIELDS`)
    and ``flips_to_target`` (None: not reached within the trial's budget)."""

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
    masked: int = 0
    sdc: int = 0
    due: int = 0
    protection: dict | None = None
    values: dict = field(default_factory=dict)

    def value(self, name: str):
        """The value of a pattern-level field or metric."""
        return self.values[name] if name in self.values else getattr(self, name)


@dataclass
class ResultRecord:
    """One trained model under one attack. ``patterns`` holds the per-pattern results in index order; record- and
    model-level fields are attributes named as in :data:`RECORD_FIELDS`; ``clean_err``/``clean_nonfinite`` and
    ``clean_values`` (plug-in metrics) are the clean memory's values."""

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
    task: str = "classification"
    n_examples: int | None = None
    inputs: dict = field(default_factory=dict)
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
    recipe: dict = field(default_factory=dict)
    trace: Any = None
    world_size: int | None = None
    model_source: str = "trained"
    checkpoint: str | None = None
    checkpoint_sha256: str | None = None
    weights_sha256: str | None = None
    target: dict | None = None
    clean_nonfinite: int = 0
    memory_overhead: float = 0.0
    decode_ms: float = 0.0
    time_overhead: float = 0.0
    protection: dict | None = None
    clean_baseline: dict | None = None
    metrics: dict = field(default_factory=dict)        # plug-in metric declarations {name: declaration}
    clean_values: dict = field(default_factory=dict)   # plug-in metrics' clean values {name: value}
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
    def examples(self) -> int:
        """Evaluated examples that errors are fractions of (``n_examples``, else ``n_eval``)."""
        return self.n_examples or self.n_eval

    def per_pattern(self, name: str) -> list:
        """The per-pattern values of a pattern-level field or plug-in metric."""
        return [p.value(name) for p in self.patterns]

    def clean_value(self, name: str):
        """The clean memory's value of a pattern-level field or metric (None where it has none)."""
        if name == "err":
            return self.clean_err
        if name == "nonfinite":
            return self.clean_nonfinite
        return self.clean_values.get(name)

    @property
    def per_pattern_err(self) -> list[float]:
        return [p.err for p in self.patterns]

    @property
    def per_pattern_rerr(self) -> list[float]:
        return [p.rerr for p in self.patterns]

    @property
    def per_pattern_nonfinite(self) -> list[int]:
        return [p.nonfinite for p in self.patterns]

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
    def nonfinite(self) -> dict:
        """``{"clean", "per_pattern", "patterns"}``: examples with non-finite logits (NaN/inf: counted as errors)
        under the clean memory and under each pattern, and the number of patterns with any."""
        pp = self.per_pattern_nonfinite
        return {"clean": self.clean_nonfinite, "per_pattern": pp, "patterns": sum(1 for v in pp if v > 0)}

    def pattern_fields(self) -> list[Field]:
        """The pattern-level fields this record carries: the built-ins, then its plug-in metrics."""
        out = [f for f in _PATTERN if f.name != "protection" or self.protection is not None]
        return out + [field_from_declaration(n, d) for n, d in self.metrics.items()]

    # -- JSON --------------------------------------------------------------------------------------------------
    def to_json(self) -> dict:
        """The file's JSON object (module docstring), summaries and content digest included."""
        d: dict = {"format": RECORD_FORMAT}
        for f in _HEAD:
            d[f.name] = getattr(self, f.name)
        pfields = self.pattern_fields()
        d["clean"] = {f.name: self.clean_value(f.name) for f in pfields if f.clean}
        d["patterns"] = {f.name: self.per_pattern(f.name) for f in pfields}
        d["summary"] = {f.name: Summary.of(self.per_pattern(f.name)).to_json() for f in pfields if f.summary}
        if self.has_curve:
            d["trials"] = {f.name: [getattr(p, f.name) for p in self.patterns] for f in _TRIAL}
        if self.trace is not None:
            d["trace"] = self.trace
        d["digest"] = record_digest(d)
        return d

    @classmethod
    def from_json(cls, d: Any, source=None) -> "ResultRecord":
        """Validate a parsed record file; :class:`RecordError` names the field and the problem."""
        try:
            return _from_json(cls, d)
        except RecordError as e:
            raise e.with_source(source) if source is not None else e


_ATTRS = {f.name for f in dc_fields(ResultRecord)}
assert all(f.name in _ATTRS for f in _HEAD), "every record/model field is a ResultRecord attribute"


def _from_json(cls, d: Any) -> ResultRecord:
    if not isinstance(d, dict):
        raise RecordError("", f"expected a JSON object, got {type(d).__name__}")
    fmt = d.get("format")
    if isinstance(fmt, str) and fmt in OLD_FORMATS:
        raise RecordError("format", f"{json.dumps(fmt)} is a record of {OLD_FORMATS[fmt]}; this version reads "
                                    f"{json.dumps(RECORD_FORMAT)} (recompute it: run the same command again)")
    if fmt != RECORD_FORMAT:
        raise RecordError("format", f"expected {json.dumps(RECORD_FORMAT)} (a result record), got {show_value(fmt)}")
    extra = sorted(set(d) - _TOP_KEYS)
    if extra:
        raise RecordError(extra[0], "unknown field")
    kw: dict = {}
    for f in _HEAD:
        if f.name not in d:
            if f.required:
                raise RecordError(f.name, "missing")
            kw[f.name] = json.loads(json.dumps(f.default))  # a fresh copy of a dict default
            continue
        f.check(d[f.name])
        kw[f.name] = d[f.name]
    plug = {n: field_from_declaration(n, decl) for n, decl in kw["metrics"].items()}
    clash = sorted(set(plug) & set(BUILTIN_PATTERN_FIELDS))
    if clash:
        raise RecordError(f"metrics.{clash[0]}", "a plug-in metric cannot take the name of a built-in field")
    examples = kw["n_examples"] or kw["n_eval"]
    pfields = [f for f in _PATTERN if f.name != "protection" or kw["protection"] is not None] + list(plug.values())

    # the per-pattern table
    table = d.get("patterns")
    if not isinstance(table, dict):
        raise RecordError("patterns", f"expected an object of per-pattern lists, got {show_value(table)}")
    want = [f.name for f in pfields]
    for k in table:
        if k not in want:
            raise RecordError(f"patterns.{k}", f"unknown field (this record's per-pattern fields: {', '.join(want)})")
    n = None
    for f in pfields:
        col = table.get(f.name)
        if not isinstance(col, list):
            raise RecordError(f"patterns.{f.name}", "missing: expected a list with one value per pattern")
        if n is None:
            n = len(col)
            if n < 1:
                raise RecordError(f"patterns.{f.name}", "empty: a record holds at least one pattern")
        elif len(col) != n:
            raise RecordError(f"patterns.{f.name}", f"{len(col)} values, but patterns.{want[0]} has {n}")
        for i, v in enumerate(col):
            f.check(v, f"patterns.{f.name}[{i}]")
    # the clean memory's values
    clean = d.get("clean")
    cnames = [f.name for f in pfields if f.clean]
    if not isinstance(clean, dict) or set(clean) != set(cnames):
        raise RecordError("clean", f"expected {{{', '.join(cnames)}}}: the clean memory's values, got "
                                   f"{show_value(clean)}")
    for f in pfields:
        if f.clean:
            f.check(clean[f.name], f"clean.{f.name}")
    kw["clean_err"], kw["clean_nonfinite"] = clean["err"], clean["nonfinite"]
    kw["clean_values"] = {k: clean[k] for k in plug if k in clean}
    pats = []
    for k in range(n):
        pats.append(PatternResult(index=k, seed=table["seed"][k], err=table["err"][k], rerr=table["rerr"][k],
                                  nonfinite=table["nonfinite"][k], masked=table["masked"][k], sdc=table["sdc"][k],
                                  due=table["due"][k],
                                  protection=table["protection"][k] if "protection" in table else None,
                                  values={m: table[m][k] for m in plug}))
    kw["patterns"] = pats
    kw["trace"] = d.get("trace")
    rec = cls(**kw)
    _check_rules(rec, d, examples)
    # derived summaries
    summ = d.get("summary")
    sfields = [f for f in pfields if f.summary]
    if not isinstance(summ, dict) or set(summ) != {f.name for f in sfields}:
        raise RecordError("summary", f"expected {{{', '.join(f.name for f in sfields)}}}, each {{mean, std, min, "
                                     f"max}} over patterns, got {show_value(summ)}")
    for f in sfields:
        mine = Summary.of(rec.per_pattern(f.name)).to_json()
        stored = summ[f.name]
        if not isinstance(stored, dict) or set(stored) != set(mine):
            raise RecordError(f"summary.{f.name}", "expected {mean, std, min, max}")
        for k, v in mine.items():
            s = stored[k]
            if not is_num(s) or abs(s - v) > _TOL:
                raise RecordError(f"summary.{f.name}.{k}", f"{show_value(s)} does not match the per-pattern values "
                                                           f"({v!r}): the record was edited or damaged")
    _curve_from_json(d, rec)
    digest = d.get("digest")
    if not isinstance(digest, str):
        raise RecordError("digest", f"missing (expected the record's content digest \"sha256:...\"), got "
                                    f"{show_value(digest)}")
    if digest != record_digest(d):
        raise RecordError("digest", "does not match the record's content: the record was edited or damaged")
    return rec


def _check_rules(rec: ResultRecord, d: dict, examples: int) -> None:
    """The cross-field rules of a record (one place: read, written and published records all pass them)."""
    for k, p in enumerate(rec.patterns):
        if p.rerr < p.err - _TOL or p.rerr < rec.clean_err - _TOL:
            raise RecordError(f"patterns.rerr[{k}]", f"{p.rerr!r} is below the pattern's error ({p.err!r}) or the "
                                                     f"clean error ({rec.clean_err!r}): RErr counts clean OR "
                                                     "perturbed mistakes")
        if not p.nonfinite <= examples:
            raise RecordError(f"patterns.nonfinite[{k}]", f"{p.nonfinite} is more than the {examples} evaluated "
                                                          "examples")
        if p.masked + p.sdc + p.due != examples:
            raise RecordError(f"patterns.masked[{k}]", f"masked + sdc + due = {p.masked + p.sdc + p.due}, not the "
                                                       f"{examples} evaluated examples")
    if rec.clean_nonfinite > examples:
        raise RecordError("clean.nonfinite", f"{rec.clean_nonfinite} is more than the {examples} evaluated examples")
    _protection_rules(rec)


def _protection_rules(rec: ResultRecord) -> None:
    prot = rec.protection
    if prot is None:
        if rec.memory_overhead != 0:
            raise RecordError("memory_overhead", f"{rec.memory_overhead!r} but the record has no protection")
        return
    for k in ("spec", "data_bits", "check_bits", "image_bits", "memory_overhead", "stages"):
        if k not in prot:
            raise RecordError(f"protection.{k}", "missing")
    if not isinstance(prot["spec"], str) or not prot["spec"]:
        raise RecordError("protection.spec", f"expected a non-empty string, got {show_value(prot['spec'])}")
    for k in ("data_bits", "check_bits", "image_bits"):
        if not (is_int(prot[k]) and prot[k] >= 0):
            raise RecordError(f"protection.{k}", f"expected an integer >= 0, got {show_value(prot[k])}")
    stages = prot["stages"]
    if not isinstance(stages, list) or not stages or not all(isinstance(s, dict) for s in stages):
        raise RecordError("protection.stages", "expected a non-empty list of objects")
    declared = set(PROTECTION_COUNTS)
    for i, s in enumerate(stages):
        name, counts = s.get("name"), s.get("counts")
        if not (isinstance(name, str) and KINDS["ident"].check(name)):
            raise RecordError(f"protection.stages[{i}].name", f"expected an identifier, got {show_value(name)}")
        if not isinstance(counts, dict) or not all(KINDS["ident"].check(c) and isinstance(v, str)
                                                   for c, v in counts.items()):
            raise RecordError(f"protection.stages[{i}].counts", "expected {count name: its doc} (the stage's "
                                                                "declared per-pattern counts)")
        declared |= {f"{name}.{c}" for c in counts}
    want = prot["check_bits"] / prot["data_bits"] if prot["data_bits"] else 0.0
    for key, v in (("protection.memory_overhead", prot["memory_overhead"]), ("memory_overhead",
                                                                               rec.memory_overhead)):
        if not is_num(v) or abs(v - want) > _TOL:
            raise RecordError(key, f"{v!r} is not check_bits / data_bits ({want!r})")
    for k, p in enumerate(rec.patterns):
        c = p.protection
        where = f"patterns.protection[{k}]"
        if not isinstance(c, dict) or not set(PROTECTION_COUNTS) <= set(c):
            raise RecordError(where, f"expected {{{', '.join(PROTECTION_COUNTS)}, ...}} with integer counts >= 0")
        for key, v in c.items():
            if key not in declared:
                raise RecordError(f"{where}.{key}", f"not a count the protection declares ({', '.join(sorted(declared))})")
            if not (is_int(v) and v >= 0):
                raise RecordError(f"{where}.{key}", f"expected an integer >= 0, got {show_value(v)}")
        if c["failed"] not in (0, 1):
            raise RecordError(f"{where}.failed", f"expected 0 or 1, got {c['failed']!r}")
        if c["failed"] and (p.err != 1 or p.rerr != 1):
            raise RecordError(f"{where}.failed", "a failed inference counts every input as misclassified "
                                                 "(err = rerr = 1)")


def _curve_from_json(d: dict, rec: ResultRecord) -> None:
    """Read and check the trial table (all fields or none) into ``rec``'s patterns."""
    trials = d.get("trials")
    if trials is None:
        if rec.target is not None:
            raise RecordError("target", "a target without trials (only adversarial records with curves have one)")
        return
    names = [f.name for f in _TRIAL]
    if not isinstance(trials, dict) or set(trials) != set(names):
        raise RecordError("trials", f"expected {{{', '.join(names)}}} (one list each, one value per trial), got "
                                    f"{show_value(trials)}")
    n = rec.n_patterns
    for f in _TRIAL:
        col = trials[f.name]
        if not isinstance(col, list) or len(col) != n:
            raise RecordError(f"trials.{f.name}", f"expected a list with one value per trial ({n})")
        for i, v in enumerate(col):
            f.check(v, f"trials.{f.name}[{i}]")
    target = rec.target
    sweep = None
    point_names = set(CURVE_POINT_FIELDS.names())
    required = {f.name for f in CURVE_POINT_FIELDS if f.required}
    for k, pat in enumerate(rec.patterns):
        used, stop, ftt, curve = (trials[x][k] for x in names)
        if ftt is not None and target is None:
            raise RecordError(f"trials.flips_to_target[{k}]", f"{ftt!r} but the record has no target")
        if ftt is not None and ftt > used:
            raise RecordError(f"trials.flips_to_target[{k}]", f"{ftt!r} is more than flips_used = {used}")
        where = f"trials.curve[{k}]"
        prev_n = prev_used = -1
        for i, pt in enumerate(curve):
            w = f"{where}[{i}]"
            if not required <= set(pt):
                raise RecordError(w, "expected {" + ", ".join(sorted(required)) + ", ...}")
            unknown = sorted(set(pt) - point_names)
            if unknown:
                raise RecordError(f"{w}.{unknown[0]}", "unknown field")
            for f in CURVE_POINT_FIELDS:
                if f.name in pt:
                    f.check(pt[f.name], f"{w}.{f.name}")
            if pt["flips"] <= prev_n:
                raise RecordError(f"{w}.flips", "expected integer flip budgets in increasing order")
            if not prev_used <= pt["flips_used"] <= min(pt["flips"], used):
                raise RecordError(f"{w}.flips_used", f"expected an integer in [previous point's, min(flips, "
                                                     f"flips_used = {used})], got {pt['flips_used']!r}")
            if pt["rerr"] < max(pt["err"], rec.clean_err) - _TOL:
                raise RecordError(f"{w}.rerr", "below its error or the clean error (RErr counts clean OR perturbed "
                                               "mistakes)")
            if target is not None:
                m = target["metric"]
                if m not in pt:
                    raise RecordError(f"{w}.{m}", "missing: the target's metric")
                reached = pt[m] >= target["value"] - 1e-12
                if reached and (ftt is None or ftt > pt["flips_used"]):
                    raise RecordError(f"trials.flips_to_target[{k}]", f"{ftt!r} but the state at {pt['flips_used']} "
                                                                      f"flips already reached the target ({m} "
                                                                      f"{pt[m]!r})")
                if not reached and ftt == pt["flips_used"]:
                    raise RecordError(f"trials.flips_to_target[{k}]", f"{ftt!r} but the state at {ftt} flips has "
                                                                      f"{m} {pt[m]!r}, below the target")
            prev_n, prev_used = pt["flips"], pt["flips_used"]
        if curve:
            last = curve[-1]
            if last["flips_used"] != used or abs(last["err"] - pat.err) > _TOL or abs(last["rerr"] - pat.rerr) > _TOL:
                raise RecordError(f"{where}[{len(curve) - 1}]", "the last point is not the trial's final state "
                                                                "(flips_used, err, rerr)")
        flips = [pt["flips"] for pt in curve]
        if sweep is None:
            sweep = flips
        elif flips != sweep:
            raise RecordError(where, f"flip budgets {flips} differ from trials.curve[0]'s {sweep}")
        pat.flips_used, pat.stop_reason, pat.flips_to_target, pat.curve = used, stop, ftt, curve


def protection_summary(rec: ResultRecord) -> dict | None:
    """Per-pattern means of every count of a protected record, plus ``failed`` (patterns whose inference failed)
    and, for stages that declare a detection ratio (``stage.ratios = {"detection": [numerator, denominator]}``),
    the ratio over all patterns (``<stage>.detection``; None where the denominator is 0); None if unprotected."""
    if rec.protection is None:
        return None
    counts = [p.protection or {} for p in rec.patterns]
    keys = sorted({k for c in counts for k in c})
    n = max(1, len(counts))
    out = {k: sum(c.get(k, 0) for c in counts) / n for k in keys}
    out["failed"] = sum(c.get("failed", 0) for c in counts)
    for stage in rec.protection.get("stages", []):
        for ratio, (num, den) in (stage.get("ratios") or {}).items():
            total = sum(c.get(f"{stage['name']}.{den}", 0) for c in counts)
            out[f"{stage['name']}.{ratio}"] = (sum(c.get(f"{stage['name']}.{num}", 0) for c in counts) / total) \
                if total else None
    return out
